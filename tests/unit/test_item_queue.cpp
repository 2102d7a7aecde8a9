// Unit tests of the bounded queue: capacity is never exceeded, lanes keep their order when one is
// full, drop-oldest evicts the oldest, waiters are notified, and closing drains.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

// cmocka 1.1 declares its functions without extern "C".
extern "C" {
#include <cmocka.h>
}

#include <vector>

#include "queue/item_queue.hpp"
#include "runtime/runtime.hpp"
#include "runtime/task.hpp"

using namespace fluxus;

namespace {

struct CountingTask : Task {
    CountingTask(Runtime *rt, TaskOwner *o) : Task(rt, o) {}
    void run() override {}
};

PendingItems pending_of(std::vector<uint64_t> items, std::vector<uint32_t> lanes = {}) {
    PendingItems p;
    p.items = std::move(items);
    p.lanes = std::move(lanes);
    return p;
}

void test_push_stops_at_capacity_and_keeps_the_rest_in_order(void **) {
    ItemQueue q(1, 4);
    q.set_producers(1);
    PendingItems p = pending_of({1, 2, 3, 4, 5, 6});
    assert_int_equal(q.push(p, nullptr), 4);
    assert_int_equal(p.size(), 2);
    assert_int_equal(q.depth(), 4);
    assert_int_equal(q.peak(), 4);
    uint64_t out[8];
    bool drained;
    assert_int_equal(q.pop(0, out, 8, nullptr, &drained), 4);
    assert_int_equal(out[0], 1);
    assert_int_equal(out[3], 4);
    assert_int_equal(q.push(p, nullptr), 2);
    assert_true(p.empty());
    assert_int_equal(q.pop(0, out, 8, nullptr, &drained), 2);
    assert_int_equal(out[0], 5);
    assert_int_equal(out[1], 6);
}

void test_a_full_lane_does_not_block_other_lanes_and_keeps_its_order(void **) {
    ItemQueue q(2, 2);
    q.set_producers(1);
    PendingItems p = pending_of({10, 11, 12, 20, 13, 21}, {0, 0, 0, 1, 0, 1});
    assert_int_equal(q.push(p, nullptr), 4);  // lane 0 takes 10, 11; lane 1 takes 20, 21
    assert_int_equal(p.size(), 2);
    assert_int_equal(p.items[p.head], 12);
    assert_int_equal(p.items[p.head + 1], 13);
    uint64_t out[4];
    bool drained;
    assert_int_equal(q.pop(0, out, 4, nullptr, &drained), 2);
    assert_int_equal(out[0], 10);
    assert_int_equal(out[1], 11);
    assert_int_equal(q.push(p, nullptr), 2);
    assert_int_equal(q.pop(0, out, 4, nullptr, &drained), 2);
    assert_int_equal(out[0], 12);
    assert_int_equal(out[1], 13);
}

void test_drop_oldest_evicts_queued_items_first(void **) {
    ItemQueue q(1, 3);
    q.set_producers(1);
    PendingItems p = pending_of({1, 2, 3});
    q.push(p, nullptr);
    std::vector<uint64_t> evicted;
    PendingItems p2 = pending_of({4, 5});
    q.push(p2, nullptr, &evicted);
    assert_true(p2.empty());
    assert_int_equal(evicted.size(), 2);
    assert_int_equal(evicted[0], 1);
    assert_int_equal(evicted[1], 2);
    assert_int_equal(q.depth(), 3);
    assert_true(q.peak() <= 3);
}

void test_waiters_are_notified_and_close_drains(void **) {
    Runtime *rt = new Runtime();
    rt->set_workers(0);
    TaskOwner owner;
    CountingTask consumer(rt, &owner), producer(rt, &owner);
    ItemQueue q(1, 1);
    q.set_producers(1);
    uint64_t out[2];
    bool drained = true;
    assert_int_equal(q.pop(0, out, 2, &consumer, &drained), 0);
    assert_false(drained);
    PendingItems p = pending_of({7, 8});
    assert_int_equal(q.push(p, &producer), 1);
    assert_int_equal(owner.active_tasks.load(), 1);  // the consumer was scheduled
    assert_int_equal(q.pop(0, out, 2, nullptr, &drained), 1);
    assert_int_equal(owner.active_tasks.load(), 2);  // and the producer woken for room
    q.producer_done();
    assert_true(q.closed());
    assert_int_equal(q.pop(0, out, 2, nullptr, &drained), 0);
    assert_true(drained);
    while (rt->run_ready() > 0) {
    }
    assert_int_equal(owner.active_tasks.load(), 0);
    rt->shutdown();
    rt->release();
}

}  // namespace

int main() {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_push_stops_at_capacity_and_keeps_the_rest_in_order),
        cmocka_unit_test(test_a_full_lane_does_not_block_other_lanes_and_keeps_its_order),
        cmocka_unit_test(test_drop_oldest_evicts_queued_items_first),
        cmocka_unit_test(test_waiters_are_notified_and_close_drains),
    };
    return cmocka_run_group_tests(tests, nullptr, nullptr);
}
