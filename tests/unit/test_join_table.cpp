// Unit tests of the join table: a key completes when every input has an item, the set leaves
// in input order; refusals (a second item for an input, a new key over the bound); expiry at
// exactly first arrival + timeout, oldest first; end of input; and a key that never completes
// not holding up or confusing the keys behind it.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

// cmocka 1.1 declares its functions without extern "C".
extern "C" {
#include <cmocka.h>
}

#include <vector>

#include "flow/join_table.hpp"
#include "fluxus.h"

using fluxus::JoinTable;
using fluxus::word_key;

namespace {

using Items = std::vector<uint64_t>;
using Done = std::vector<JoinTable::Done>;

void test_key_completes_when_every_input_has_an_item_in_input_order(void **) {
    JoinTable j(3, 0, 0);
    Done out;
    assert_int_equal(j.add(word_key(7), 2, 72, 100, out), 0);
    assert_int_equal(j.add(word_key(7), 0, 70, 150, out), 0);
    assert_true(out.empty());
    assert_int_equal(j.waiting(), 1);
    assert_int_equal(j.add(word_key(7), 1, 71, 200, out), 0);
    assert_int_equal(out.size(), 1);
    assert_true((out[0].items == Items{70, 71, 72}));
    assert_int_equal(out[0].start_ns, 100);  // when the key's first item came
    assert_int_equal(out[0].status, 0);
    assert_int_equal(j.waiting(), 0);
}

void test_single_input_join_completes_at_once(void **) {
    JoinTable j(1, 10, 1);
    Done out;
    assert_int_equal(j.add(word_key(1), 0, 11, 5, out), 0);
    assert_int_equal(j.add(word_key(1), 0, 12, 6, out), 0);  // a new key each time
    assert_int_equal(out.size(), 2);
    assert_true(out[1].items == Items{12});
    assert_int_equal(j.next_deadline(), UINT64_MAX);
}

void test_sixty_four_inputs_use_every_mask_bit(void **) {
    JoinTable j(64, 0, 0);
    Done out;
    for (uint32_t i = 63; i > 0; --i) assert_int_equal(j.add(word_key(1), i, 1000 + i, 0, out), 0);
    assert_true(out.empty());
    assert_int_equal(j.add(word_key(1), 0, 1000, 0, out), 0);
    assert_int_equal(out.size(), 1);
    assert_int_equal(out[0].items.size(), 64);
    for (uint32_t i = 0; i < 64; ++i) assert_int_equal(out[0].items[i], 1000 + i);
}

void test_second_item_for_a_waiting_input_is_refused(void **) {
    JoinTable j(2, 0, 0);
    Done out;
    assert_int_equal(j.add(word_key(1), 0, 10, 0, out), 0);
    assert_int_equal(j.add(word_key(1), 0, 11, 1, out), FLUXUS_EINVAL);
    assert_int_equal(j.add(word_key(1), 1, 12, 2, out), 0);
    assert_int_equal(out.size(), 1);
    assert_true((out[0].items == Items{10, 12}));  // the refused item took no slot
    // After completing, the key starts over: input 0 is welcome again.
    assert_int_equal(j.add(word_key(1), 0, 13, 3, out), 0);
}

void test_new_key_over_the_bound_is_refused_but_waiting_keys_still_join(void **) {
    JoinTable j(2, 0, 2);
    Done out;
    assert_int_equal(j.add(word_key(1), 0, 10, 0, out), 0);
    assert_int_equal(j.add(word_key(2), 0, 20, 0, out), 0);
    assert_int_equal(j.add(word_key(3), 0, 30, 0, out), FLUXUS_EFULL);
    assert_int_equal(j.waiting(), 2);
    assert_int_equal(j.add(word_key(1), 1, 11, 0, out), 0);  // completes key 1
    assert_int_equal(j.add(word_key(3), 0, 30, 0, out), 0);  // room again
    assert_int_equal(j.waiting(), 2);
}

void test_keys_expire_at_exactly_first_arrival_plus_timeout_oldest_first(void **) {
    JoinTable j(3, 100, 0);
    Done out;
    j.add(word_key(1), 1, 11, 1000, out);
    j.add(word_key(2), 2, 22, 1010, out);
    j.add(word_key(1), 2, 12, 1050, out);  // a later item does not restart the timeout
    j.add(word_key(3), 0, 30, 1020, out);
    assert_int_equal(j.next_deadline(), 1100);
    j.expire(1099, out);
    assert_true(out.empty());
    j.expire(1110, out);
    assert_int_equal(out.size(), 2);
    assert_true((out[0].items == Items{11, 12}));  // only the arrivals, in input order
    assert_int_equal(out[0].status, FLUXUS_ETIMEDOUT);
    assert_int_equal(out[0].start_ns, 1000);
    assert_true(out[1].items == Items{22});
    assert_int_equal(out[1].start_ns, 1010);
    assert_int_equal(j.next_deadline(), 1120);
    assert_int_equal(j.waiting(), 1);
}

void test_zero_timeout_never_expires(void **) {
    JoinTable j(2, 0, 0);
    Done out;
    j.add(word_key(1), 0, 10, 0, out);
    assert_int_equal(j.next_deadline(), UINT64_MAX);
    j.expire(UINT64_MAX, out);
    assert_true(out.empty());
    assert_int_equal(j.waiting(), 1);
}

void test_end_of_input_hands_back_every_waiting_key_oldest_first(void **) {
    JoinTable j(3, 0, 0);
    Done out;
    j.add(word_key(5), 2, 52, 10, out);
    j.add(word_key(6), 0, 60, 20, out);
    j.add(word_key(7), 0, 70, 30, out);
    j.add(word_key(7), 1, 71, 31, out);
    j.add(word_key(6), 1, 61, 32, out);
    j.add(word_key(6), 2, 62, 33, out);  // key 6 completes
    assert_int_equal(out.size(), 1);
    out.clear();
    j.take_all(out);
    assert_int_equal(out.size(), 2);
    assert_true(out[0].items == Items{52});
    assert_int_equal(out[0].status, FLUXUS_ECLOSED);
    assert_true((out[1].items == Items{70, 71}));
    assert_int_equal(out[1].start_ns, 30);
    assert_int_equal(j.waiting(), 0);
    assert_int_equal(j.next_deadline(), UINT64_MAX);
}

void test_a_rejoined_key_gets_its_own_timeout(void **) {
    JoinTable j(2, 100, 0);
    Done out;
    j.add(word_key(1), 0, 10, 0, out);
    j.add(word_key(1), 1, 11, 5, out);  // completes
    j.add(word_key(1), 0, 12, 500, out);
    assert_int_equal(j.next_deadline(), 600);  // not 100 from the first round
    j.expire(599, out);
    assert_int_equal(out.size(), 1);
    j.expire(600, out);
    assert_int_equal(out.size(), 2);
    assert_int_equal(out[1].status, FLUXUS_ETIMEDOUT);
    assert_true(out[1].items == Items{12});
}

void test_a_key_that_never_completes_does_not_disturb_the_keys_behind_it(void **) {
    JoinTable j(2, 1000000, 0);
    Done out;
    j.add(word_key(0), 0, 1, 0, out);  // waits for ever (until the timeout)
    for (uint64_t k = 1; k <= 200000; ++k) {
        j.add(word_key(k), 0, 2 * k, k, out);
        j.add(word_key(k), 1, 2 * k + 1, k, out);
    }
    assert_int_equal(out.size(), 200000);
    assert_int_equal(j.waiting(), 1);
    assert_int_equal(j.next_deadline(), 1000000);
    j.add(word_key(999999999), 0, 5, 300000, out);
    out.clear();
    j.expire(1000000, out);
    assert_int_equal(out.size(), 1);
    assert_true(out[0].items == Items{1});
    assert_int_equal(j.next_deadline(), 1300000);
}

}  // namespace

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_completes_when_every_input_has_an_item_in_input_order),
        cmocka_unit_test(test_single_input_join_completes_at_once),
        cmocka_unit_test(test_sixty_four_inputs_use_every_mask_bit),
        cmocka_unit_test(test_second_item_for_a_waiting_input_is_refused),
        cmocka_unit_test(test_new_key_over_the_bound_is_refused_but_waiting_keys_still_join),
        cmocka_unit_test(test_keys_expire_at_exactly_first_arrival_plus_timeout_oldest_first),
        cmocka_unit_test(test_zero_timeout_never_expires),
        cmocka_unit_test(test_end_of_input_hands_back_every_waiting_key_oldest_first),
        cmocka_unit_test(test_a_rejoined_key_gets_its_own_timeout),
        cmocka_unit_test(test_a_key_that_never_completes_does_not_disturb_the_keys_behind_it),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
