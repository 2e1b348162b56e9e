"""WasmEdge through its C API: discovery, worker processes, AOT cache.

``worker`` (the child process), ``capi`` and ``protocol`` import nothing but the
standard library: a worker runs under WasmEdge's own loader, with only this
package's sources on its path.
"""
