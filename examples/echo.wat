;; echo.wat: a WASI preview 1 command module that copies stdin to stdout.
;;
;; The smallest possible edgesync function: the request body comes in on stdin, the
;; response goes out on stdout. Reads in 64 KiB chunks and handles short writes.
;; Exit status: 0 on EOF, 1 when fd_read or fd_write fails.
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))

  ;; 0..8: one iovec {ptr, len}; 8..12: bytes read or written; 1024..: the buffer.
  (memory (export "memory") 2)
  (global $buf i32 (i32.const 1024))
  (global $bufsize i32 (i32.const 65536))

  (func $start (export "_start")
    (local $n i32)
    (local $off i32)
    (local $done i32)
    (block $eof
      (loop $read
        (i32.store (i32.const 0) (global.get $buf))
        (i32.store (i32.const 4) (global.get $bufsize))
        (if (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8))
          (then (call $proc_exit (i32.const 1))))
        (local.set $n (i32.load (i32.const 8)))
        (br_if $eof (i32.eqz (local.get $n)))
        (local.set $off (global.get $buf))
        (loop $write
          (i32.store (i32.const 0) (local.get $off))
          (i32.store (i32.const 4) (local.get $n))
          (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
            (then (call $proc_exit (i32.const 1))))
          (local.set $done (i32.load (i32.const 8)))
          ;; A write that makes no progress would spin forever.
          (if (i32.eqz (local.get $done)) (then (call $proc_exit (i32.const 1))))
          (local.set $off (i32.add (local.get $off) (local.get $done)))
          (local.set $n (i32.sub (local.get $n) (local.get $done)))
          (br_if $write (local.get $n)))
        (br $read))))
)
