// KeySet: the set a dedup stage remembers keys in. An open-addressing table (linear probing,
// power-of-two size, grown x2 at 7/8 load) of 64-bit keys or of 128-bit digests of byte keys,
// optionally bounded with two generations (see fluxus_stage_set_dedup_max_keys()).
// Owned by one stage worker; not thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace fluxus {

struct Key128 {
    uint64_t lo, hi;
    bool operator==(const Key128 &o) const { return lo == o.lo && hi == o.hi; }
};

// Hash of a word key (XXH3 of its 8 bytes) and digest of a byte key (XXH3-128).
uint64_t hash_word(uint64_t key);
Key128 digest_bytes(const void *data, size_t len);

template <class K>
class FlatSet {
public:
    FlatSet() = default;
    ~FlatSet();
    FlatSet(const FlatSet &) = delete;
    FlatSet &operator=(const FlatSet &) = delete;

    // Inserts `key` (hash `h`); returns 1 if it was new, 0 if present, -1 if out of memory.
    int insert(const K &key, uint64_t h);
    bool contains(const K &key, uint64_t h) const;
    // Brings the slot a key with hash `h` starts probing at into cache.
    void prefetch(uint64_t h) const {
        if (slots_) __builtin_prefetch(&slots_[h & mask_]);
    }
    uint64_t size() const { return size_ + (has_zero_ ? 1 : 0); }
    void clear();

private:
    bool grow();
    K *slots_ = nullptr;
    uint64_t mask_ = 0;  // capacity - 1; capacity 0 until the first insert
    uint64_t size_ = 0;  // non-zero keys stored
    bool has_zero_ = false;
};

// The dedup memory of one worker: exact (one unbounded set) or bounded (two generations).
class KeySet {
public:
    explicit KeySet(uint64_t max_keys);

    // Returns 1 if the key is new (the item passes), 0 if seen, -1 if out of memory.
    int insert_word(uint64_t key);
    // Batch form: result[i] as insert_word(keys[i]). Hashes the batch first and prefetches the
    // slots a few keys ahead, so the table's cache misses overlap instead of queueing.
    void insert_words(const uint64_t *keys, size_t n, int8_t *result);
    int insert_digest(const Key128 &key);

    uint64_t size() const;
    uint64_t forgotten() const { return forgotten_; }

private:
    template <class K>
    int insert_gen(FlatSet<K> *cur, FlatSet<K> *old, const K &key, uint64_t h);
    uint64_t generation_limit_;  // 0 = unbounded
    uint64_t forgotten_ = 0;
    FlatSet<uint64_t> words_[2];
    FlatSet<Key128> digests_[2];
    int cur_ = 0;  // index of the current generation
};

}  // namespace fluxus
