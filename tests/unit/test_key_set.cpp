// Unit tests of the dedup key set against std::unordered_set, including the zero key, growth,
// byte-key digests and the bounded two-generation mode.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

// cmocka 1.1 declares its functions without extern "C".
extern "C" {
#include <cmocka.h>
}

#include <unordered_set>
#include <vector>

#include "dedup/key_set.hpp"

using fluxus::KeySet;

namespace {

uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

void test_exact_word_set_matches_reference(void **) {
    KeySet set(0);
    std::unordered_set<uint64_t> ref;
    for (uint64_t i = 0; i < 300000; ++i) {
        uint64_t k = mix(i) % 100000;  // many repeats, includes 0
        int r = set.insert_word(k);
        bool fresh = ref.insert(k).second;
        assert_int_equal(r, fresh ? 1 : 0);
    }
    assert_int_equal(set.size(), ref.size());
    assert_int_equal(set.forgotten(), 0);
}

void test_zero_and_max_keys_are_ordinary_keys(void **) {
    KeySet set(0);
    assert_int_equal(set.insert_word(0), 1);
    assert_int_equal(set.insert_word(0), 0);
    assert_int_equal(set.insert_word(UINT64_MAX), 1);
    assert_int_equal(set.insert_word(UINT64_MAX), 0);
    assert_int_equal(set.size(), 2);
}

void test_byte_keys_are_compared_by_digest(void **) {
    KeySet set(0);
    const char a[] = "alpha", b[] = "beta";
    assert_int_equal(set.insert_digest(fluxus::digest_bytes(a, 5)), 1);
    assert_int_equal(set.insert_digest(fluxus::digest_bytes(b, 4)), 1);
    assert_int_equal(set.insert_digest(fluxus::digest_bytes("alpha", 5)), 0);
    assert_int_equal(set.insert_digest(fluxus::digest_bytes("", 0)), 1);
    assert_int_equal(set.insert_digest(fluxus::digest_bytes("", 0)), 0);
}

void test_bounded_set_remembers_recent_keys_and_counts_forgotten(void **) {
    KeySet set(1000);  // two generations of 500
    for (uint64_t k = 1; k <= 5000; ++k) assert_int_equal(set.insert_word(k), 1);
    assert_true(set.size() <= 1000);
    // The last 500 distinct keys are always remembered.
    for (uint64_t k = 4501; k <= 5000; ++k) assert_int_equal(set.insert_word(k), 0);
    // The oldest are forgotten and pass again.
    assert_int_equal(set.insert_word(1), 1);
    assert_true(set.forgotten() >= 3500);
    assert_int_equal(set.forgotten() + set.size(), 5001);  // every key ever inserted
}

void test_batch_insert_matches_single_inserts(void **) {
    KeySet batch(0), single(0);
    std::vector<uint64_t> keys(5000);
    std::vector<int8_t> result(keys.size());
    for (int round = 0; round < 20; ++round) {
        for (size_t i = 0; i < keys.size(); ++i) keys[i] = mix(round * 5000 + i) % 40000;
        batch.insert_words(keys.data(), keys.size(), result.data());
        for (size_t i = 0; i < keys.size(); ++i)
            assert_int_equal(result[i], single.insert_word(keys[i]));
    }
    assert_int_equal(batch.size(), single.size());
}

}  // namespace

int main() {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_word_set_matches_reference),
        cmocka_unit_test(test_zero_and_max_keys_are_ordinary_keys),
        cmocka_unit_test(test_byte_keys_are_compared_by_digest),
        cmocka_unit_test(test_bounded_set_remembers_recent_keys_and_counts_forgotten),
        cmocka_unit_test(test_batch_insert_matches_single_inserts),
    };
    return cmocka_run_group_tests(tests, nullptr, nullptr);
}
