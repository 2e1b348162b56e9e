;; loop.wat: an endless loop that calls nothing. Only a time limit that interrupts
;; running code (wasmtime epochs or fuel, WasmEdge --time-limit) stops it.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $forever (br $forever)))
)
