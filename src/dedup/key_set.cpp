// KeySet implementation. Keys equal to zero cannot mark empty slots, so zero is stored aside.
#define XXH_INLINE_ALL
#include "dedup/key_set.hpp"

#include <xxhash.h>

#include <cstdlib>
#include <cstring>
#include <new>

#include "platform/large_alloc.hpp"

namespace fluxus {

uint64_t hash_word(uint64_t key) { return XXH3_64bits(&key, sizeof key); }

Key128 digest_bytes(const void *data, size_t len) {
    XXH128_hash_t h = XXH3_128bits(data, len);
    return Key128{h.low64, h.high64};
}

namespace {

// Tables from 2 MiB up come from the OS and are offered transparent huge pages where it has them:
// a dedup set is probed at random, and with 4 KiB pages nearly every probe also misses the TLB.
constexpr size_t kHugeThreshold = size_t(2) << 20;

void *alloc_zeroed(size_t bytes) {
    if (bytes < kHugeThreshold) return std::calloc(bytes, 1);
    return large_alloc_zeroed(bytes);
}

void free_zeroed(void *p, size_t bytes) {
    if (!p) return;
    if (bytes < kHugeThreshold)
        std::free(p);
    else
        large_free(p, bytes);
}

inline bool is_zero(uint64_t k) { return k == 0; }
inline bool is_zero(const Key128 &k) { return k.lo == 0 && k.hi == 0; }
}  // namespace

template <class K>
FlatSet<K>::~FlatSet() {
    free_zeroed(slots_, slots_ ? (mask_ + 1) * sizeof(K) : 0);
}

template <class K>
void FlatSet<K>::clear() {
    free_zeroed(slots_, slots_ ? (mask_ + 1) * sizeof(K) : 0);
    slots_ = nullptr;
    mask_ = 0;
    size_ = 0;
    has_zero_ = false;
}

template <class K>
bool FlatSet<K>::grow() {
    uint64_t old_cap = slots_ ? mask_ + 1 : 0;
    uint64_t cap = old_cap ? old_cap * 2 : 1024;
    // Zeroed memory comes lazily from the kernel, and zero is the empty mark.
    K *fresh = static_cast<K *>(alloc_zeroed(cap * sizeof(K)));
    if (!fresh) return false;
    uint64_t mask = cap - 1;
    for (uint64_t i = 0; i < old_cap; ++i) {
        const K &k = slots_[i];
        if (is_zero(k)) continue;
        uint64_t h;
        if constexpr (sizeof(K) == 8)
            h = hash_word(reinterpret_cast<const uint64_t &>(k));
        else
            h = reinterpret_cast<const Key128 &>(k).lo;
        uint64_t pos = h & mask;
        while (!is_zero(fresh[pos])) pos = (pos + 1) & mask;
        fresh[pos] = k;
    }
    free_zeroed(slots_, old_cap * sizeof(K));
    slots_ = fresh;
    mask_ = mask;
    return true;
}

template <class K>
int FlatSet<K>::insert(const K &key, uint64_t h) {
    if (is_zero(key)) {
        if (has_zero_) return 0;
        has_zero_ = true;
        return 1;
    }
    if (!slots_ || (size_ + 1) * 4 > (mask_ + 1) * 3) {
        if (!grow()) return -1;
    }
    uint64_t pos = h & mask_;
    for (;;) {
        K &slot = slots_[pos];
        if (is_zero(slot)) {
            slot = key;
            ++size_;
            return 1;
        }
        if (slot == key) return 0;
        pos = (pos + 1) & mask_;
    }
}

template <class K>
bool FlatSet<K>::contains(const K &key, uint64_t h) const {
    if (is_zero(key)) return has_zero_;
    if (!slots_) return false;
    uint64_t pos = h & mask_;
    for (;;) {
        const K &slot = slots_[pos];
        if (is_zero(slot)) return false;
        if (slot == key) return true;
        pos = (pos + 1) & mask_;
    }
}

template class FlatSet<uint64_t>;
template class FlatSet<Key128>;

KeySet::KeySet(uint64_t max_keys) : generation_limit_(max_keys ? (max_keys + 1) / 2 : 0) {}

template <class K>
int KeySet::insert_gen(FlatSet<K> *cur, FlatSet<K> *old, const K &key, uint64_t h) {
    if (generation_limit_ == 0) return cur->insert(key, h);
    if (old->contains(key, h) || cur->contains(key, h)) return 0;
    if (cur->size() >= generation_limit_) {
        // The current generation is full: forget the older one and start a new generation.
        forgotten_ += old->size();
        old->clear();
        cur_ ^= 1;
        std::swap(cur, old);
    }
    return cur->insert(key, h);
}

int KeySet::insert_word(uint64_t key) {
    return insert_gen(&words_[cur_], &words_[cur_ ^ 1], key, hash_word(key));
}

void KeySet::insert_words(const uint64_t *keys, size_t n, int8_t *result) {
    constexpr size_t kChunk = 64, kAhead = 16;
    uint64_t h[kChunk];
    for (size_t base = 0; base < n; base += kChunk) {
        size_t m = n - base < kChunk ? n - base : kChunk;
        for (size_t i = 0; i < m; ++i) h[i] = hash_word(keys[base + i]);
        if (generation_limit_ != 0) {
            for (size_t i = 0; i < m; ++i)
                result[base + i] = int8_t(insert_gen(&words_[cur_], &words_[cur_ ^ 1],
                                                     keys[base + i], h[i]));
            continue;
        }
        FlatSet<uint64_t> &set = words_[cur_];
        for (size_t i = 0; i < m && i < kAhead; ++i) set.prefetch(h[i]);
        for (size_t i = 0; i < m; ++i) {
            if (i + kAhead < m) set.prefetch(h[i + kAhead]);
            result[base + i] = int8_t(set.insert(keys[base + i], h[i]));
        }
    }
}

int KeySet::insert_digest(const Key128 &key) {
    return insert_gen(&digests_[cur_], &digests_[cur_ ^ 1], key, key.lo);
}

uint64_t KeySet::size() const {
    return words_[0].size() + words_[1].size() + digests_[0].size() + digests_[1].size();
}

}  // namespace fluxus
