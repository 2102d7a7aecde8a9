// Unit tests of the timer heap: deadlines fire at exactly `now`, in deadline then insertion
// order; host callbacks run once and release their `user` once (run, cancelled, dropped or
// destroyed); what a callback adds for "now" waits for the next pass; owners' tasks are
// removed as a barrier.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

// cmocka 1.1 declares its functions without extern "C".
extern "C" {
#include <cmocka.h>
}

#include <stdexcept>
#include <vector>

#include "fake_task.hpp"
#include "runtime/timer_heap.hpp"

using fluxus::TimerCallback;
using fluxus::TimerHeap;
using fluxus_test::BareRuntime;
using fluxus_test::CountingTask;

namespace {

// A host callback's log: which ids ran, in order, and how often each user was freed.
// Declare the Log and the Tags before the TimerHeap that uses them: the heap's destructor
// releases pending callbacks, and their free_tag reads the tag and writes into the log.
struct Log {
    std::vector<int> ran;
    std::vector<int> freed;
    TimerHeap *heap = nullptr;
    uint64_t cancel_id = 0;   // cancel this one when tag 100 runs
    bool rearm = false;       // tag 200 adds a timer for the same `now`
    uint64_t now = 0;
};

struct Tag {
    Log *log;
    int id;
};

void on_timer(void *user) {
    Tag *t = static_cast<Tag *>(user);
    t->log->ran.push_back(t->id);
    if (t->id == 100) t->log->heap->cancel_callback(t->log->cancel_id);
    if (t->id == 200 && t->log->rearm) {
        uint64_t id = 0;
        static Tag again{nullptr, 201};
        again.log = t->log;
        t->log->heap->add_callback(t->log->now, TimerCallback{on_timer, &again, nullptr}, &id);
    }
    if (t->id == 300) throw std::runtime_error("timer");
}

void free_tag(void *user) {
    Tag *t = static_cast<Tag *>(user);
    t->log->freed.push_back(t->id);
}

TimerCallback cb(Tag *t) { return TimerCallback{on_timer, t, free_tag}; }

void test_empty_heap_has_no_deadline(void **) {
    TimerHeap heap;
    assert_int_equal(heap.size(), 0);
    assert_int_equal(heap.next_deadline(), UINT64_MAX);
    assert_int_equal(heap.fire_due(UINT64_MAX), UINT64_MAX);
}

void test_add_reports_whether_the_entry_is_now_the_earliest(void **) {
    BareRuntime br;
    CountingTask a(br.rt, &br.owner);
    Log log;
    Tag t{&log, 1};
    TimerHeap heap;
    assert_true(heap.add(100, &a, &br.owner));
    assert_false(heap.add(200, &a, &br.owner));
    assert_false(heap.add(100, &a, &br.owner));  // a tie is not earlier: first added fires first
    assert_true(heap.add(99, &a, &br.owner));
    uint64_t id = 0;
    assert_true(heap.add_callback(50, cb(&t), &id));
    assert_int_equal(heap.next_deadline(), 50);
    assert_int_equal(heap.size(), 5);
}

void test_task_deadlines_fire_at_exactly_now(void **) {
    BareRuntime br;
    CountingTask a(br.rt, &br.owner), b(br.rt, &br.owner);
    TimerHeap heap;
    heap.add(1000, &a, &br.owner);
    heap.add(2000, &b, &br.owner);
    assert_int_equal(heap.fire_due(999), 1000);
    assert_int_equal(br.run_queued(), 0);
    assert_int_equal(heap.fire_due(1000), 2000);
    assert_int_equal(br.run_queued(), 1);
    assert_int_equal(a.runs, 1);
    assert_int_equal(heap.fire_due(5000), UINT64_MAX);
    assert_int_equal(br.run_queued(), 1);
    assert_int_equal(b.runs, 1);
    assert_int_equal(heap.size(), 0);
}

void test_due_entries_of_one_task_wake_it_once(void **) {
    BareRuntime br;
    CountingTask a(br.rt, &br.owner);
    TimerHeap heap;
    for (uint64_t d = 1; d <= 10; ++d) heap.add(d, &a, &br.owner);
    assert_int_equal(heap.fire_due(10), UINT64_MAX);
    assert_int_equal(br.run_queued(), 1);  // one notify() while scheduled is one run
    assert_int_equal(a.runs, 1);
}

void test_callbacks_run_in_deadline_then_insertion_order(void **) {
    Log log;
    TimerHeap heap;
    Tag t[6] = {{&log, 0}, {&log, 1}, {&log, 2}, {&log, 3}, {&log, 4}, {&log, 5}};
    const uint64_t deadline[6] = {30, 10, 20, 10, 30, 10};
    uint64_t ids[6];
    for (int i = 0; i < 6; ++i) heap.add_callback(deadline[i], cb(&t[i]), &ids[i]);
    assert_int_equal(heap.fire_due(30), UINT64_MAX);
    const std::vector<int> want = {1, 3, 5, 2, 0, 4};
    assert_true(log.ran == want);
    assert_true(log.freed == want);  // each user released once, right after its run
}

void test_callback_ids_are_nonzero_and_distinct(void **) {
    BareRuntime br;
    CountingTask a(br.rt, &br.owner);
    Log log;
    Tag t{&log, 1};
    TimerHeap heap;
    std::vector<uint64_t> ids;
    for (int i = 0; i < 100; ++i) {
        uint64_t id = 0;
        heap.add(7, &a, &br.owner);  // tasks use up sequence numbers too
        heap.add_callback(5, TimerCallback{on_timer, &t, nullptr}, &id);
        assert_true(id != 0);
        for (uint64_t seen : ids) assert_true(seen != id);
        ids.push_back(id);
    }
}

void test_cancel_removes_a_pending_callback_and_releases_its_user(void **) {
    Log log;
    Tag a{&log, 1}, b{&log, 2};
    TimerHeap heap;
    uint64_t ida = 0, idb = 0;
    heap.add_callback(10, cb(&a), &ida);
    heap.add_callback(20, cb(&b), &idb);
    assert_true(heap.cancel_callback(ida));
    assert_true(log.ran.empty());
    assert_true(log.freed == std::vector<int>{1});
    assert_false(heap.cancel_callback(ida));  // already gone
    assert_false(heap.cancel_callback(0));
    assert_false(heap.cancel_callback(999));
    assert_int_equal(heap.next_deadline(), 20);  // the heap is still ordered
    assert_int_equal(heap.fire_due(20), UINT64_MAX);
    assert_true(log.ran == std::vector<int>{2});
    assert_false(heap.cancel_callback(idb));  // already ran
    assert_int_equal(log.freed.size(), 2);
}

void test_cancel_does_not_take_a_task_entry_by_its_sequence_number(void **) {
    BareRuntime br;
    CountingTask a(br.rt, &br.owner);
    Log log;
    Tag t{&log, 1};
    TimerHeap heap;
    uint64_t id = 0;
    heap.add_callback(10, cb(&t), &id);
    heap.add(10, &a, &br.owner);  // its sequence number is id + 1
    assert_false(heap.cancel_callback(id + 1));
    assert_int_equal(heap.size(), 2);
}

void test_a_callback_can_cancel_another_due_at_the_same_moment(void **) {
    Log log;
    Tag first{&log, 100}, second{&log, 2};
    TimerHeap heap;
    log.heap = &heap;
    uint64_t id1 = 0;
    heap.add_callback(10, cb(&first), &id1);
    heap.add_callback(10, cb(&second), &log.cancel_id);
    assert_int_equal(heap.fire_due(10), UINT64_MAX);
    assert_true(log.ran == std::vector<int>{100});
    assert_int_equal(log.freed.size(), 2);  // the cancelled one's user was released too
}

void test_a_timer_added_for_now_by_a_callback_waits_for_the_next_pass(void **) {
    Log log;
    Tag t{&log, 200};
    TimerHeap heap;
    log.heap = &heap;
    log.rearm = true;
    log.now = 10;
    uint64_t id = 0;
    heap.add_callback(10, cb(&t), &id);
    assert_int_equal(heap.fire_due(10), 10);  // the new one is due but did not run
    assert_true(log.ran == std::vector<int>{200});
    log.rearm = false;
    assert_int_equal(heap.fire_due(10), UINT64_MAX);
    assert_true((log.ran == std::vector<int>{200, 201}));
}

void test_a_throwing_callback_loses_only_its_own_call(void **) {
    Log log;
    Tag bad{&log, 300}, good{&log, 2};
    TimerHeap heap;
    uint64_t id = 0;
    heap.add_callback(1, cb(&bad), &id);
    heap.add_callback(2, cb(&good), &id);
    assert_int_equal(heap.fire_due(2), UINT64_MAX);
    assert_true((log.ran == std::vector<int>{300, 2}));
    assert_true((log.freed == std::vector<int>{300, 2}));
}

void test_remove_owner_drops_only_that_owners_tasks(void **) {
    BareRuntime br;
    CountingTask a(br.rt, &br.owner), b(br.rt, &br.other_owner);
    Log log;
    Tag t{&log, 1};
    TimerHeap heap;
    uint64_t id = 0;
    heap.add(5, &a, &br.owner);
    heap.add(15, &a, &br.owner);
    heap.add(10, &b, &br.other_owner);
    heap.add_callback(12, cb(&t), &id);
    heap.remove_owner(&br.owner);
    assert_int_equal(heap.size(), 2);
    assert_int_equal(heap.next_deadline(), 10);
    assert_int_equal(heap.fire_due(100), UINT64_MAX);
    assert_int_equal(br.run_queued(), 1);
    assert_int_equal(a.runs, 0);
    assert_int_equal(b.runs, 1);
    assert_true(log.ran == std::vector<int>{1});
}

void test_dropped_and_destroyed_callbacks_release_their_user_without_running(void **) {
    BareRuntime br;
    CountingTask a(br.rt, &br.owner);
    Log log;
    Tag t1{&log, 1}, t2{&log, 2}, t3{&log, 3};
    uint64_t id = 0;
    {
        TimerHeap heap;
        heap.add_callback(10, cb(&t1), &id);
        heap.add(20, &a, &br.owner);
        heap.add_callback(30, cb(&t2), &id);
        heap.drop_callbacks();
        assert_int_equal(heap.size(), 1);  // the task's entry stays
        assert_int_equal(heap.next_deadline(), 20);
        assert_int_equal(log.freed.size(), 2);
        heap.add_callback(40, cb(&t3), &id);
    }
    assert_true(log.ran.empty());
    assert_int_equal(log.freed.size(), 3);
    assert_int_equal(log.freed.back(), 3);
}

}  // namespace

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_heap_has_no_deadline),
        cmocka_unit_test(test_add_reports_whether_the_entry_is_now_the_earliest),
        cmocka_unit_test(test_task_deadlines_fire_at_exactly_now),
        cmocka_unit_test(test_due_entries_of_one_task_wake_it_once),
        cmocka_unit_test(test_callbacks_run_in_deadline_then_insertion_order),
        cmocka_unit_test(test_callback_ids_are_nonzero_and_distinct),
        cmocka_unit_test(test_cancel_removes_a_pending_callback_and_releases_its_user),
        cmocka_unit_test(test_cancel_does_not_take_a_task_entry_by_its_sequence_number),
        cmocka_unit_test(test_a_callback_can_cancel_another_due_at_the_same_moment),
        cmocka_unit_test(test_a_timer_added_for_now_by_a_callback_waits_for_the_next_pass),
        cmocka_unit_test(test_a_throwing_callback_loses_only_its_own_call),
        cmocka_unit_test(test_remove_owner_drops_only_that_owners_tasks),
        cmocka_unit_test(test_dropped_and_destroyed_callbacks_release_their_user_without_running),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
