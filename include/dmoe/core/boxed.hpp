// detail::boxed<T>: a T on the heap, for the container members of dmoe's classes (their hash maps, ordered maps,
// sets and deques), so that including a class's header does not instantiate its members' class templates.
#pragma once

#include <dmoe/core/config.hpp>

#include <utility>

DMOE_BEGIN_NAMESPACE
namespace detail {

// Owns one heap-allocated T, made by T's default constructor. A class member declared `boxed<std::unordered_map<K,
// V>> m_;` names the map's type without instantiating it: only code that constructs, destroys, copies or reaches
// into the map does (with g++, an unordered_map member costs every translation unit that includes its class about
// 1.4 MB of compiler memory, a map 0.8 MB; the box, a pointer). Reach the value with `->` and `*`.
//
// Value semantics, as for the container itself: copying copies the value; moving moves it without allocating
// (noexcept) and leaves the source holding an empty T, so a moved-from owner reads as empty and can be used again.
// (The source gives its heap block away; its next non-const access allocates a new one, and until then const access
// reads a shared empty T.)
// Errors: construction, copying and the first non-const access after a move throw what `new T` throws
// (std::bad_alloc).
template <class T>
class boxed {
 public:
  boxed() : p_(new T()) {}
  boxed(const boxed& other) : p_(new T(*other)) {}
  boxed(boxed&& other) noexcept : p_(std::exchange(other.p_, nullptr)) {}
  boxed& operator=(const boxed& other) {
    if (this != &other) **this = *other;
    return *this;
  }
  boxed& operator=(boxed&& other) noexcept {
    if (this != &other) {
      delete p_;
      p_ = std::exchange(other.p_, nullptr);
    }
    return *this;
  }
  ~boxed() { delete p_; }

  T& operator*() {
    if (p_ == nullptr) p_ = new T();
    return *p_;
  }
  const T& operator*() const { return p_ != nullptr ? *p_ : empty(); }
  T* operator->() { return &**this; }
  const T* operator->() const { return &**this; }

 private:
  static const T& empty() {
    static const T value{};
    return value;
  }

  T* p_;  // null only after the value was moved away
};

}  // namespace detail
DMOE_END_NAMESPACE
