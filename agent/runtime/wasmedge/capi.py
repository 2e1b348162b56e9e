"""ctypes bindings for the part of WasmEdge 0.14's C API edgesync uses (stdlib only).

Declarations follow ``include/api/wasmedge/wasmedge.h`` at tag 0.14.1; only the
structs passed by value are spelled out (``WasmEdge_String`` is ``{uint32_t Length;
const char *Buf}``, ``WasmEdge_Result`` is ``{uint32_t Code}`` with the category in
the top 8 bits). Every context is an opaque pointer. This module is imported by
the worker process, which runs with nothing but the standard library.
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, Structure, c_bool, c_char_p, c_uint32, c_void_p
from typing import Any

#: ``WasmEdge::ErrCode::Value`` codes the worker tells apart (include/common/enum.inc).
TERMINATED = 0x0001
INTERRUPTED = 0x0007
CATEGORY_WASM = 0x00
OUTPUT_FORMAT_NATIVE = 0  # WasmEdge_CompilerOutputFormat_Native: a shared library
#: WasmEdge_CompilerOptimizationLevel_O2: what ``wasmedge compile`` uses by default (the
#: C API's default is O3: ≈ 30 ms against ≈ 23 ms per small module here).
OPTIMIZATION_O2 = 2


class WasmEdgeString(Structure):
    _fields_ = [("Length", c_uint32), ("Buf", c_char_p)]


class WasmEdgeResult(Structure):
    _fields_ = [("Code", c_uint32)]


def wrap(text: bytes) -> WasmEdgeString:
    """A ``WasmEdge_String`` viewing ``text`` (which must outlive the call)."""
    return WasmEdgeString(len(text), text)


_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "WasmEdge_VersionGet": (c_char_p, []),
    "WasmEdge_LogOff": (None, []),
    "WasmEdge_ResultGetMessage": (c_char_p, [WasmEdgeResult]),
    "WasmEdge_ConfigureCreate": (c_void_p, []),
    "WasmEdge_ConfigureDelete": (None, [c_void_p]),
    "WasmEdge_ConfigureSetMaxMemoryPage": (None, [c_void_p, c_uint32]),
    "WasmEdge_ConfigureCompilerSetInterruptible": (None, [c_void_p, c_bool]),
    "WasmEdge_ConfigureCompilerSetOutputFormat": (None, [c_void_p, ctypes.c_int]),
    "WasmEdge_ConfigureCompilerSetOptimizationLevel": (None, [c_void_p, ctypes.c_int]),
    "WasmEdge_CompilerCreate": (c_void_p, [c_void_p]),
    "WasmEdge_CompilerCompile": (WasmEdgeResult, [c_void_p, c_char_p, c_char_p]),
    "WasmEdge_CompilerDelete": (None, [c_void_p]),
    "WasmEdge_LoaderCreate": (c_void_p, [c_void_p]),
    "WasmEdge_LoaderParseFromFile": (WasmEdgeResult, [c_void_p, POINTER(c_void_p), c_char_p]),
    "WasmEdge_LoaderParseFromBuffer": (
        WasmEdgeResult,
        [c_void_p, POINTER(c_void_p), c_char_p, c_uint32],
    ),
    "WasmEdge_LoaderDelete": (None, [c_void_p]),
    "WasmEdge_ValidatorCreate": (c_void_p, [c_void_p]),
    "WasmEdge_ValidatorValidate": (WasmEdgeResult, [c_void_p, c_void_p]),
    "WasmEdge_ValidatorDelete": (None, [c_void_p]),
    "WasmEdge_ASTModuleDelete": (None, [c_void_p]),
    "WasmEdge_ExecutorCreate": (c_void_p, [c_void_p, c_void_p]),
    "WasmEdge_ExecutorDelete": (None, [c_void_p]),
    "WasmEdge_ExecutorRegisterImport": (WasmEdgeResult, [c_void_p, c_void_p, c_void_p]),
    "WasmEdge_ExecutorInstantiate": (
        WasmEdgeResult,
        [c_void_p, POINTER(c_void_p), c_void_p, c_void_p],
    ),
    "WasmEdge_ExecutorInvoke": (
        WasmEdgeResult,
        [c_void_p, c_void_p, c_void_p, c_uint32, c_void_p, c_uint32],
    ),
    "WasmEdge_ExecutorAsyncInvoke": (c_void_p, [c_void_p, c_void_p, c_void_p, c_uint32]),
    "WasmEdge_AsyncWait": (None, [c_void_p]),
    "WasmEdge_AsyncCancel": (None, [c_void_p]),
    "WasmEdge_AsyncDelete": (None, [c_void_p]),
    "WasmEdge_StoreCreate": (c_void_p, []),
    "WasmEdge_StoreDelete": (None, [c_void_p]),
    "WasmEdge_ModuleInstanceCreateWASI": (
        c_void_p,
        [POINTER(c_char_p), c_uint32, POINTER(c_char_p), c_uint32, POINTER(c_char_p), c_uint32],
    ),
    "WasmEdge_ModuleInstanceWASIGetExitCode": (c_uint32, [c_void_p]),
    "WasmEdge_ModuleInstanceFindFunction": (c_void_p, [c_void_p, WasmEdgeString]),
    "WasmEdge_ModuleInstanceFindMemory": (c_void_p, [c_void_p, WasmEdgeString]),
    "WasmEdge_ModuleInstanceDelete": (None, [c_void_p]),
    "WasmEdge_MemoryInstanceGetPageSize": (c_uint32, [c_void_p]),
}


class WasmEdgeLibrary:
    """``libwasmedge`` with the prototypes above declared; attribute access by C name."""

    def __init__(self, path: str) -> None:
        self.cdll = ctypes.CDLL(path)
        for name, (restype, argtypes) in _SIGNATURES.items():
            function = getattr(self.cdll, name)
            function.restype = restype
            function.argtypes = argtypes
            setattr(self, name.removeprefix("WasmEdge_"), function)

    def __getattr__(self, name: str) -> Any:  # the functions are set in __init__
        raise AttributeError(name)

    def version(self) -> str:
        return (self.VersionGet() or b"").decode()

    def message(self, result: WasmEdgeResult) -> str:
        return (self.ResultGetMessage(result) or b"unknown error").decode("utf-8", "replace")


def code_of(result: WasmEdgeResult) -> int:
    return result.Code & 0x00FFFFFF


def category_of(result: WasmEdgeResult) -> int:
    return result.Code >> 24


def succeeded(result: WasmEdgeResult) -> bool:
    """``WasmEdge_ResultOK``: success, or ``proc_exit`` (terminated)."""
    return category_of(result) == CATEGORY_WASM and code_of(result) in (0, TERMINATED)


def c_strings(items: list[bytes]) -> ctypes.Array[c_char_p]:
    return (c_char_p * max(1, len(items)))(*items)
