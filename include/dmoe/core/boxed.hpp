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
// Copying copies the value. Moving steals the value and leaves the source empty-handed: the source may then only
// be assigned to or destroyed, as for the owners' own moves (none reads a moved-from member).
// Errors: construction and copying throw what `new T` throws (std::bad_alloc).
template <class T>
class boxed {
 public:
  boxed() : p_(new T()) {}
  boxed(const boxed& other) : p_(new T(*other.p_)) {}
  boxed(boxed&& other) noexcept : p_(std::exchange(other.p_, nullptr)) {}
  boxed& operator=(const boxed& other) {
    if (this == &other) return *this;
    if (p_ == nullptr) p_ = new T(*other.p_);
    else *p_ = *other.p_;
    return *this;
  }
  boxed& operator=(boxed&& other) noexcept {
    std::swap(p_, other.p_);
    return *this;
  }
  ~boxed() { delete p_; }

  T& operator*() noexcept { return *p_; }
  const T& operator*() const noexcept { return *p_; }
  T* operator->() noexcept { return p_; }
  const T* operator->() const noexcept { return p_; }

 private:
  T* p_;
};

}  // namespace detail
DMOE_END_NAMESPACE
