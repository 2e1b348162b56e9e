;; add.wat: a reactor module (no _start) exporting add(i32, i32) -> i32, for
;; `wasmedge --reactor add.wasm add 2 3` and direct calls from an embedding.
(module
  (memory (export "memory") 1)
  (func (export "_initialize"))
  (func (export "add") (param $a i32) (param $b i32) (result i32)
    (i32.add (local.get $a) (local.get $b)))
)
