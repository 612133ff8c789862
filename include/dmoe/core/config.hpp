// Library-wide configuration: the versioned inline namespace, the version numbers, and the compilation mode.
#pragma once

#define DMOE_VERSION_MAJOR 0
#define DMOE_VERSION_MINOR 1
#define DMOE_VERSION_PATCH 0

// Every declaration lives in dmoe::v0, so two builds with different ABIs fail at link time.
#define DMOE_BEGIN_NAMESPACE \
  namespace dmoe {           \
  inline namespace v0 {
#define DMOE_END_NAMESPACE \
  }                        \
  }

// Compilation modes (the scheme of Boost.Asio's ASIO_SEPARATE_COMPILATION):
// - header-only (the default): every definition is in the headers. The heavy ones (compute kernels, codecs,
//   checkpoints) are function templates with a defaulted dummy parameter, so only a translation unit that calls
//   one instantiates its body and the templates it uses (Eigen's above all).
// - DMOE_SEPARATE_COMPILATION defined in every translation unit of the program: the headers only declare the heavy
//   functions, and one translation unit defines them by including <dmoe/impl/src.hpp> (the CMake target
//   dmoe::compiled does it). All translation units of a program must agree on the mode.
#if defined(DMOE_SEPARATE_COMPILATION)
#define DMOE_HEADER_ONLY 0
#else
#define DMOE_HEADER_ONLY 1
#endif

// Whether this translation unit sees the heavy definitions: always in header-only mode, and otherwise in the one
// translation unit that includes <dmoe/impl/src.hpp> (or another that defines DMOE_COMPILING_SOURCE and builds dmoe
// in an inline namespace of its own, as tests/tensor/wire_codec_build.inc does).
#if DMOE_HEADER_ONLY || defined(DMOE_COMPILING_SOURCE)
#define DMOE_HEAVY_DEFINITIONS 1
#else
#define DMOE_HEAVY_DEFINITIONS 0
#endif

// DMOE_DECL starts the declaration of a heavy function, DMOE_DEF its definition (which repeats the signature
// without default arguments). Header-only: `template <int = 0>` / `template <int>`, so calls are unchanged and the
// body is instantiated only where it is called. Separate compilation: an ordinary function, defined once.
// DMOE_INLINE starts the out-of-line definition of a heavy function that cannot be a template (a destructor,
// operator=, a virtual function), placed behind DMOE_HEAVY_DEFINITIONS: `inline` header-only, an ordinary
// definition, compiled once, with separate compilation. A virtual function defined so is declared DMOE_INLINE in
// its class as well: otherwise it would be the class's key function, and every header-only translation unit would
// emit the vtable and everything it reaches. Every other heavy function (the coroutines and long bodies of the
// runtime, RPC, DHT, server and DMoE layers, constructors included) uses DMOE_DECL/DMOE_DEF; header-only, its
// address must name the specialization (`&C::f<>`) or be taken with the target type given.
// A function defined in a light section whose body calls a heavy one, or instantiates much of the standard library
// (a container's find, erase or insert, a std::function, a message formatted with dmoe::format), is DMOE_LAZY
// (below): were it an ordinary inline function, every translation unit would compile it, and in header-only mode
// instantiate the heavy body and everything that body calls. So is, as a rule, any other light-section function
// whose body spans three lines or more (with g++, that rule cut what separate compilation's <dmoe/dmoe.hpp> makes
// the compiler allocate from 354 to 338 MB); one-line bodies stay ordinary inline functions. Functions that cannot be
// templates (destructors, virtual functions) call only light code, or are DMOE_INLINE behind
// DMOE_HEAVY_DEFINITIONS; an override that needs a heavy body calls it through a member function pointer that a
// DMOE_DECL constructor sets (moe::dht_expert_directory). Types that only the heavy definitions use (a class's
// per-call state, its RAII guards) are declared in the class and defined behind DMOE_HEAVY_DEFINITIONS
// (net::rpc_client, dht::node), so other translation units never instantiate their members.
// A class's container members (hash maps, ordered maps, sets, deques) are detail::boxed (core/boxed.hpp): the class
// then names their types without instantiating them. DMOE_LAZY does not help a function that reaches into such a
// member, as a template's non-dependent expressions are resolved where it is defined: those functions are DMOE_DECL,
// and a constructor that builds the members is DMOE_INLINE (or DMOE_LAZY when it takes arguments). Likewise any
// light-section function that calls a function template (a DMOE_LAZY function, binary_reader::read<T>, dmoe::format)
// is itself DMOE_LAZY, one-line bodies included, or the callee is compiled in every translation unit; where the
// caller must stay an ordinary function (shape's constructors), its error path throws through a DMOE_DECL function.
// With g++, those rules took separate compilation's <dmoe/dmoe.hpp> from 333 to 281 MB of allocation.
#if DMOE_HEADER_ONLY
#define DMOE_INLINE inline
#else
#define DMOE_INLINE
#endif

// DMOE_LAZY starts a function defined where it is declared, in a light section: `template <int = 0>` in both
// modes, so that its body, and all it instantiates, is compiled only in the translation units that call it, and
// stays inline there. Calls are unchanged; such a function cannot be virtual, a constructor so marked must take
// arguments, and its address names the specialization (`&C::f<>`).
#define DMOE_LAZY template <int = 0>

#if DMOE_HEADER_ONLY
#define DMOE_DECL template <int = 0>
#define DMOE_DEF template <int>
#else
#define DMOE_DECL
#define DMOE_DEF
#endif
