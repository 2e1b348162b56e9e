;; trap.wat: writes a line to stdout and one to stderr, then traps (`unreachable`).
;; A runtime must report the trap as an error and must not pass the partial stdout
;; on as a successful response.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "partial output\n")
  (data (i32.const 128) "trap.wat: about to trap\n")

  (func $print (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))

  (func (export "_start")
    (call $print (i32.const 1) (i32.const 64) (i32.const 15))
    (call $print (i32.const 2) (i32.const 128) (i32.const 24))
    unreachable)
)
