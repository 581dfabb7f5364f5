"""Minimal offline @rules_cc stand-in: re-export Bazel's native C++ rules."""

cc_binary = native.cc_binary
cc_import = native.cc_import
cc_library = native.cc_library
cc_test = native.cc_test
cc_toolchain = native.cc_toolchain
cc_toolchain_suite = native.cc_toolchain_suite

# Less common rules; None where this Bazel version lacks them.
cc_proto_library = getattr(native, "cc_proto_library", None)
cc_shared_library = getattr(native, "cc_shared_library", None)
fdo_prefetch_hints = getattr(native, "fdo_prefetch_hints", None)
fdo_profile = getattr(native, "fdo_profile", None)
objc_import = getattr(native, "objc_import", None)
objc_library = getattr(native, "objc_library", None)
