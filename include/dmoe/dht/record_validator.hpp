// Signed DHT records (ed25519, libsodium): signing, verifying, owner subkeys, and refusal of overwrites and replays.
//
// A subkey that contains "[owner:<64 hex digits>]" names the ed25519 public key that owns it: it is stored only
// with a valid signature by that key. A stored value that was signed by a key can be replaced only by a record
// signed by the same key with a strictly later expiration, so nobody else overwrites it and an older signed
// record cannot be replayed over a newer one. The signature covers the whole record: domain tag, key, subkey,
// value and expiration (a replay with an edited expiration fails verification).
// Signature blob (timed_value::signature): public key (32 bytes) then the detached signature (64 bytes).
// Plain keys are XXH3-128 hashes, so a storing node cannot tell from the key who owns it: a plain key is
// protected from the first signed store on (put owned plain values under an owner subkey to protect them from
// the start).
#pragma once

#include <dmoe/core/binary_writer.hpp>
#include <dmoe/core/byte_buffer.hpp>
#include <dmoe/core/config.hpp>
#include <dmoe/core/error.hpp>
#include <dmoe/dht/node_id.hpp>
#include <dmoe/dht/record.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>

#include <fmt/core.h>
#if DMOE_HEAVY_DEFINITIONS
#include <sodium.h>
#endif

DMOE_BEGIN_NAMESPACE
namespace dht {

// ed25519's sizes in bytes (RFC 8032; libsodium's crypto_sign_PUBLICKEYBYTES, _SECRETKEYBYTES, _SEEDBYTES and _BYTES,
// checked against them where the definitions are compiled, so that the declarations need no <sodium.h>).
inline constexpr std::size_t ed25519_public_key_size = 32;
inline constexpr std::size_t ed25519_secret_key_size = 64;
inline constexpr std::size_t ed25519_seed_size = 32;
inline constexpr std::size_t ed25519_signature_size = 64;

using ed25519_public_key = std::array<std::byte, ed25519_public_key_size>;
inline constexpr std::size_t signature_blob_size = ed25519_public_key_size + ed25519_signature_size;  // 96

namespace detail {
// sodium_init(), once per process; throws error(errc::io) when libsodium cannot start.
DMOE_DECL void init_sodium();
}  // namespace detail

// An ed25519 key pair; the secret key never leaves this object.
class ed25519_keypair {
 public:
  // A fresh key pair from libsodium's generator.
  DMOE_DECL static ed25519_keypair generate();
  // The key pair of a 32-byte seed (the same seed always gives the same pair: keep the seed to keep an identity).
  DMOE_DECL static ed25519_keypair from_seed(std::span<const std::byte, ed25519_seed_size> seed);
  // The seed this pair derives from (secret: whoever has it can sign as this key).
  DMOE_DECL std::array<std::byte, ed25519_seed_size> seed() const;
  const ed25519_public_key& public_key() const noexcept { return public_; }

  // The detached signature of `message`.
  DMOE_DECL std::array<std::byte, ed25519_signature_size> sign(const_byte_span message) const;

 private:
  ed25519_public_key public_{};
  std::array<std::byte, ed25519_secret_key_size> secret_{};
};

// "[owner:<hex of the public key>]": put it in a subkey to make the subkey owned by that key.
DMOE_LAZY inline std::string owner_tag(const ed25519_public_key& key) {
  std::string out = "[owner:";
  for (auto b : key) out += dmoe::format("{:02x}", static_cast<unsigned>(b));
  return out + "]";
}

// The public key a subkey names with an owner tag, if any; a malformed tag names nobody (and so protects nothing).
DMOE_DECL std::optional<ed25519_public_key> owner_of(const_byte_span subkey);
#if DMOE_HEAVY_DEFINITIONS
static_assert(ed25519_public_key_size == crypto_sign_PUBLICKEYBYTES &&
              ed25519_secret_key_size == crypto_sign_SECRETKEYBYTES && ed25519_seed_size == crypto_sign_SEEDBYTES &&
              ed25519_signature_size == crypto_sign_BYTES);

DMOE_DEF void detail::init_sodium() {
  static const int ready = sodium_init();
  if (ready < 0) throw error(errc::io, "libsodium failed to initialise");
}

DMOE_DEF std::optional<ed25519_public_key> owner_of(const_byte_span subkey) {
  constexpr std::string_view marker = "[owner:";
  const std::string_view text = as_string_view(subkey);
  const auto at = text.find(marker);
  if (at == std::string_view::npos) return std::nullopt;
  const std::string_view hex = text.substr(at + marker.size());
  if (hex.size() < 2 * crypto_sign_PUBLICKEYBYTES + 1 || hex[2 * crypto_sign_PUBLICKEYBYTES] != ']')
    return std::nullopt;
  ed25519_public_key key{};
  for (std::size_t i = 0; i < key.size(); ++i) {
    unsigned value = 0;
    for (std::size_t j = 0; j < 2; ++j) {
      const char c = hex[2 * i + j];
      unsigned digit = 0;
      if (c >= '0' && c <= '9') digit = static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f') digit = static_cast<unsigned>(c - 'a' + 10);
      else return std::nullopt;
      value = value * 16 + digit;
    }
    key[i] = static_cast<std::byte>(value);
  }
  return key;
}
#endif  // DMOE_HEAVY_DEFINITIONS

// The bytes a record's signature covers.
DMOE_DECL byte_buffer signed_payload(const key_id& key, const byte_buffer* subkey, const_byte_span value,
                                  wall_seconds expiration);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF byte_buffer signed_payload(const key_id& key, const byte_buffer* subkey, const_byte_span value,
                                  wall_seconds expiration) {
  constexpr std::string_view domain = "dmoe.dht.record.v1";
  byte_buffer out;
  out.reserve(domain.size() + 64 + value.size() + (subkey ? subkey->size() : 0));
  binary_writer w(out);
  w.write_string(domain);
  const auto key_bytes = key.to_bytes();
  w.write_bytes(key_bytes);
  w.write<std::uint8_t>(subkey ? 1 : 0);
  if (subkey) w.write_blob(*subkey);
  w.write_blob(value);
  w.write<double>(expiration);
  return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS

// The signature blob (public key, signature) for a record.
DMOE_DECL byte_buffer sign_record(const ed25519_keypair& owner, const key_id& key, const byte_buffer* subkey,
                               const_byte_span value, wall_seconds expiration);
#if DMOE_HEAVY_DEFINITIONS
DMOE_DEF byte_buffer sign_record(const ed25519_keypair& owner, const key_id& key, const byte_buffer* subkey,
                               const_byte_span value, wall_seconds expiration) {
  const auto signature = owner.sign(signed_payload(key, subkey, value, expiration));
  byte_buffer out(owner.public_key().begin(), owner.public_key().end());
  out.insert(out.end(), signature.begin(), signature.end());
  return out;
}
#endif  // DMOE_HEAVY_DEFINITIONS

// The verdict on one incoming record.
enum class validation : std::uint8_t {
  ok = 0,
  malformed_signature = 1,  // a signature blob that is not public key + signature (96 bytes)
  bad_signature = 2,        // does not verify over (key, subkey, value, expiration)
  missing_signature = 3,    // the subkey names an owner, or the stored value is signed, and this is unsigned
  wrong_owner = 4,          // signed, but not by the owner (of the subkey, or of the stored value)
  replay = 5,               // signed by the owner, but not later than the signed value stored
};

constexpr std::string_view to_string(validation v) noexcept {
  switch (v) {
    case validation::ok: return "ok";
    case validation::malformed_signature: return "malformed_signature";
    case validation::bad_signature: return "bad_signature";
    case validation::missing_signature: return "missing_signature";
    case validation::wrong_owner: return "wrong_owner";
    case validation::replay: return "replay";
  }
  return "unknown";
}

// Checks signed records before they reach storage (what is stored is passed in). Remembers recent records of at
// most `max_remembered_record` bytes whose signature verified, byte for byte (payload and signature blob; at most
// `max_remembered_bytes` in all, then it starts over), so the copies of one record that a `latest` get collects
// from k peers cost one ed25519 verification (~50 us), not k. Not thread-safe: one per node (the node's thread).
class record_validator {
 public:
  static constexpr std::size_t max_remembered_record = 2048;
  static constexpr std::size_t max_remembered_bytes = std::size_t{1} << 20;

  DMOE_DECL record_validator() { detail::init_sodium(); }

  // Validates storing `incoming` under `key` (and `subkey`, for a dictionary entry) where `stored` is what the
  // key holds now (storage::get), if anything.
  DMOE_DECL validation validate(const key_id& key, const byte_buffer* subkey, const timed_value& incoming,
                      const std::optional<record>& stored) const;

 private:
  DMOE_DECL static std::optional<ed25519_public_key> signer_of(const timed_value& v);

  mutable std::unordered_set<std::string> verified_;  // payload + signature blob of records that verified
  mutable std::size_t verified_bytes_ = 0;
};

}  // namespace dht
DMOE_END_NAMESPACE

#if DMOE_HEAVY_DEFINITIONS

DMOE_BEGIN_NAMESPACE
namespace dht {

DMOE_DEF auto ed25519_keypair::generate() -> ed25519_keypair {
  detail::init_sodium();
  ed25519_keypair pair;
  crypto_sign_keypair(reinterpret_cast<unsigned char*>(pair.public_.data()),
                      reinterpret_cast<unsigned char*>(pair.secret_.data()));
  return pair;
}

DMOE_DEF auto ed25519_keypair::from_seed(std::span<const std::byte, crypto_sign_SEEDBYTES> seed) -> ed25519_keypair {
  detail::init_sodium();
  ed25519_keypair pair;
  crypto_sign_seed_keypair(reinterpret_cast<unsigned char*>(pair.public_.data()),
                           reinterpret_cast<unsigned char*>(pair.secret_.data()),
                           reinterpret_cast<const unsigned char*>(seed.data()));
  return pair;
}

DMOE_DEF auto ed25519_keypair::seed() const -> std::array<std::byte, crypto_sign_SEEDBYTES> {
  std::array<std::byte, crypto_sign_SEEDBYTES> out{};
  crypto_sign_ed25519_sk_to_seed(reinterpret_cast<unsigned char*>(out.data()),
                                 reinterpret_cast<const unsigned char*>(secret_.data()));
  return out;
}

DMOE_DEF auto ed25519_keypair::sign(const_byte_span message) const -> std::array<std::byte, crypto_sign_BYTES> {
  std::array<std::byte, crypto_sign_BYTES> out{};
  crypto_sign_detached(reinterpret_cast<unsigned char*>(out.data()), nullptr,
                       reinterpret_cast<const unsigned char*>(message.data()), message.size(),
                       reinterpret_cast<const unsigned char*>(secret_.data()));
  return out;
}

DMOE_DEF auto record_validator::validate(const key_id& key, const byte_buffer* subkey, const timed_value& incoming,
                    const std::optional<record>& stored) const -> validation {
  std::optional<ed25519_public_key> signer;
  if (!incoming.signature.empty()) {
    if (incoming.signature.size() != signature_blob_size) return validation::malformed_signature;
    ed25519_public_key key_bytes{};
    std::memcpy(key_bytes.data(), incoming.signature.data(), key_bytes.size());
    byte_buffer payload = signed_payload(key, subkey, incoming.value, incoming.expiration);
    const std::size_t payload_size = payload.size();
    payload.insert(payload.end(), incoming.signature.begin(), incoming.signature.end());
    const std::string_view whole = as_string_view(payload);
    const bool small = whole.size() <= max_remembered_record;
    if (!small || !verified_.contains(std::string(whole))) {
      if (crypto_sign_verify_detached(
              reinterpret_cast<const unsigned char*>(incoming.signature.data()) + crypto_sign_PUBLICKEYBYTES,
              reinterpret_cast<const unsigned char*>(payload.data()), payload_size,
              reinterpret_cast<const unsigned char*>(key_bytes.data())) != 0)
        return validation::bad_signature;
      if (small) {
        if (verified_bytes_ + whole.size() > max_remembered_bytes) {
          verified_.clear();
          verified_bytes_ = 0;
        }
        if (verified_.emplace(whole).second) verified_bytes_ += whole.size();
      }
    }
    signer = key_bytes;
  }
  if (subkey) {
    if (auto owner = owner_of(*subkey)) {
      if (!signer) return validation::missing_signature;
      if (*signer != *owner) return validation::wrong_owner;
    }
  }
  if (!stored) return validation::ok;
  // Every signed value this store would replace must be replaced by its own signer, and only by a later one.
  auto check_protected = [&](const timed_value& old) {
    const auto old_signer = signer_of(old);
    if (!old_signer) return validation::ok;
    if (!signer) return validation::missing_signature;
    if (*signer != *old_signer) return validation::wrong_owner;
    if (!(incoming.expiration > old.expiration)) return validation::replay;
    return validation::ok;
  };
  if (!stored->is_dictionary) return check_protected(stored->value);
  if (subkey) {
    auto it = stored->subkeys.find(*subkey);
    return it == stored->subkeys.end() ? validation::ok : check_protected(it->second);
  }
  for (const auto& [name, old] : stored->subkeys)  // a plain value would replace the whole dictionary
    if (auto verdict = check_protected(old); verdict != validation::ok) return verdict;
  return validation::ok;
}

DMOE_DEF auto record_validator::signer_of(const timed_value& v) -> std::optional<ed25519_public_key> {
  if (v.signature.size() != signature_blob_size) return std::nullopt;
  ed25519_public_key key{};
  std::memcpy(key.data(), v.signature.data(), key.size());
  return key;
}

}  // namespace dht
DMOE_END_NAMESPACE

#endif  // DMOE_HEAVY_DEFINITIONS
