;; hello: the smallest useful edgesync function.
;;
;; A WASI (preview 1) command module, as PROTOCOL.md says functions are: `_start`
;; writes a greeting, then copies the request body from stdin to stdout. The demo
;; (examples/demo_api.py) compiles it with wasmtime.wat2wasm and makes version 2 by
;; changing the "v1" in the greeting.
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)

  ;; 0..8: an iovec for writes; 16..24: an iovec for reads; 24: bytes read.
  (data (i32.const 64) "hello from edgesync v1: ")
  (global $greeting_len i32 (i32.const 24))
  (global $buffer i32 (i32.const 1024))
  (global $buffer_len i32 (i32.const 4096))

  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))

  (func (export "_start")
    (local $read i32)
    (call $write (i32.const 64) (global.get $greeting_len))
    (block $done
      (loop $copy
        (i32.store (i32.const 16) (global.get $buffer))
        (i32.store (i32.const 20) (global.get $buffer_len))
        ;; a non-zero errno or end of input ends the copy
        (br_if $done (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
        (local.set $read (i32.load (i32.const 24)))
        (br_if $done (i32.eqz (local.get $read)))
        (call $write (global.get $buffer) (local.get $read))
        (br $copy))))
)
