;; grow.wat: grows its memory by 1000 pages (62.5 MiB on top of the initial 64 KiB)
;; and writes to every new page, then prints "grew 1000 pages\n".
;;
;; Under a memory limit below 1001 pages memory.grow returns -1 (it does not trap);
;; the module then does what a C program whose malloc fails does: it says so on
;; stderr and traps (abort() is `unreachable` in wasi-libc).
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "grew 1000 pages\n")
  (data (i32.const 128) "grow.wat: memory.grow failed\n")

  (func $print (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))

  (func (export "_start")
    (local $page i32)
    (local $end i32)
    (local.set $page (memory.grow (i32.const 1000)))
    (if (i32.eq (local.get $page) (i32.const -1))
      (then
        (call $print (i32.const 2) (i32.const 128) (i32.const 29))
        unreachable))
    ;; Touch every new page so the memory is really committed.
    (local.set $end (i32.add (local.get $page) (i32.const 1000)))
    (loop $touch
      (i32.store (i32.shl (local.get $page) (i32.const 16)) (local.get $page))
      (local.set $page (i32.add (local.get $page) (i32.const 1)))
      (br_if $touch (i32.lt_u (local.get $page) (local.get $end))))
    (call $print (i32.const 1) (i32.const 64) (i32.const 16)))
)
