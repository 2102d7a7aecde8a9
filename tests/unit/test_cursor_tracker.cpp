// Unit tests of the cursor tracker (the low watermark of a cursor source): a cursor is committed
// only when its page and every page before it are finished, in order, once; empty pages,
// spawned items, unfinished ends that hold the watermark for good, ends of unknown pages, and
// commit callbacks that throw or end items themselves.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

// cmocka 1.1 declares its functions without extern "C".
extern "C" {
#include <cmocka.h>
}

#include <algorithm>
#include <atomic>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "core/cursor_tracker.hpp"

using fluxus::CursorTracker;

namespace {

// Items are page * 1000 + i; the page is the cursor the read was called with.
uint64_t item(uint64_t page, uint64_t i) { return page * 1000 + i; }

struct Host {
    std::mutex mu;
    std::vector<uint64_t> commits;
    int depth = 0, max_depth = 0;
    bool throw_in_commit = false;
    CursorTracker *tracker = nullptr;
    std::vector<uint64_t> end_in_commit;  // items the commit callback ends itself
};

uint64_t page_of(void *, uint64_t it) {
    if (it == UINT64_MAX - 1) throw std::runtime_error("page_of");
    return it / 1000;
}

void commit(void *user, uint64_t cursor) {
    Host *h = static_cast<Host *>(user);
    ++h->depth;
    h->max_depth = std::max(h->max_depth, h->depth);
    {
        std::lock_guard<std::mutex> lock(h->mu);
        h->commits.push_back(cursor);
    }
    std::vector<uint64_t> end;
    end.swap(h->end_in_commit);
    for (uint64_t it : end) h->tracker->item_ended(it, true);
    --h->depth;
    if (h->throw_in_commit) throw std::runtime_error("commit");
}

using Commits = std::vector<uint64_t>;

void test_nothing_is_committed_before_a_page_finishes(void **) {
    Host h;
    CursorTracker t(page_of, commit, &h);
    assert_false(t.has_committed());
    t.page_read(0, 10, 2);
    t.item_ended(item(0, 0), true);
    assert_true(h.commits.empty());
    assert_false(t.has_committed());
    t.item_ended(item(0, 1), true);
    assert_true(h.commits == Commits{10});  // the next read's cursor
    assert_true(t.has_committed());
    assert_int_equal(t.committed(), 10);
}

void test_a_finished_page_waits_for_every_page_before_it(void **) {
    Host h;
    CursorTracker t(page_of, commit, &h);
    t.page_read(0, 10, 1);
    t.page_read(10, 20, 1);
    t.page_read(20, 30, 1);
    t.item_ended(item(20, 0), true);
    t.item_ended(item(10, 0), true);
    assert_true(h.commits.empty());
    t.item_ended(item(0, 0), true);
    assert_true(h.commits == Commits{30});  // one commit for all three pages
    assert_int_equal(t.committed(), 30);
}

void test_pages_finishing_in_order_are_committed_one_by_one(void **) {
    Host h;
    CursorTracker t(page_of, commit, &h);
    for (uint64_t p = 0; p < 5; ++p) t.page_read(p * 10, p * 10 + 10, 1);
    for (uint64_t p = 0; p < 5; ++p) t.item_ended(item(p * 10, 0), true);
    assert_true((h.commits == Commits{10, 20, 30, 40, 50}));
}

void test_an_empty_page_is_committed_once_the_pages_before_it_are(void **) {
    Host h;
    CursorTracker t(page_of, commit, &h);
    t.page_read(0, 10, 0);
    assert_true(h.commits == Commits{10});
    t.page_read(10, 20, 1);
    t.page_read(20, 30, 0);  // behind an unfinished page: waits
    assert_true(h.commits == Commits{10});
    t.item_ended(item(10, 0), true);
    assert_true((h.commits == Commits{10, 30}));
}

void test_spawned_items_hold_their_page_until_they_end(void **) {
    Host h;
    CursorTracker t(page_of, commit, &h);
    t.page_read(0, 10, 1);
    const uint64_t children[] = {item(0, 1), item(0, 2)};
    t.items_spawned(children, 2);
    t.item_ended(item(0, 0), true);  // the parent ends (a flat map consumed it)
    t.item_ended(children[0], true);
    assert_true(h.commits.empty());
    t.item_ended(children[1], true);
    assert_true(h.commits == Commits{10});
}

void test_an_unfinished_item_holds_the_watermark_at_its_page_for_good(void **) {
    Host h;
    CursorTracker t(page_of, commit, &h);
    t.page_read(0, 10, 1);
    t.page_read(10, 20, 2);
    t.page_read(20, 30, 1);
    t.item_ended(item(0, 0), true);
    assert_true(h.commits == Commits{10});
    t.item_ended(item(10, 0), false);  // cancelled, dropped or failed under fail-fast
    t.item_ended(item(10, 1), true);
    t.item_ended(item(20, 0), true);
    t.page_read(30, 40, 0);
    assert_true(h.commits == Commits{10});
    assert_int_equal(t.committed(), 10);
}

void test_ends_of_unknown_or_committed_pages_are_counted_not_applied(void **) {
    Host h;
    CursorTracker t(page_of, commit, &h);
    t.page_read(0, 10, 1);
    t.page_read(10, 20, 1);
    t.page_ended(999, true);
    assert_int_equal(t.unknown_pages(), 1);
    const uint64_t stray[] = {item(777, 0)};
    t.items_spawned(stray, 1);
    assert_int_equal(t.unknown_pages(), 2);
    t.item_ended(item(0, 0), true);
    assert_true(h.commits == Commits{10});
    t.item_ended(item(0, 5), true);  // page 0 is committed and gone
    assert_int_equal(t.unknown_pages(), 3);
    t.item_ended(item(10, 0), true);
    assert_true((h.commits == Commits{10, 20}));
}

void test_a_throwing_page_of_makes_an_unknown_page(void **) {
    Host h;
    CursorTracker t(page_of, commit, &h);
    assert_int_equal(t.page_of(UINT64_MAX - 1), UINT64_MAX);
    t.page_read(0, 10, 1);
    t.item_ended(UINT64_MAX - 1, true);
    assert_int_equal(t.unknown_pages(), 1);
    assert_true(h.commits.empty());
}

void test_a_throwing_commit_callback_loses_only_that_call(void **) {
    Host h;
    h.throw_in_commit = true;
    CursorTracker t(page_of, commit, &h);
    t.page_read(0, 10, 1);
    t.page_read(10, 20, 1);
    t.item_ended(item(0, 0), true);
    t.item_ended(item(10, 0), true);
    assert_true((h.commits == Commits{10, 20}));
    assert_int_equal(t.committed(), 20);
}

void test_without_a_commit_callback_the_watermark_still_advances(void **) {
    CursorTracker t(page_of, nullptr, nullptr);
    t.page_read(5, 17, 1);
    t.item_ended(item(5, 0), true);
    assert_true(t.has_committed());
    assert_int_equal(t.committed(), 17);
}

void test_items_ended_inside_the_commit_callback_commit_after_it_returns(void **) {
    Host h;
    CursorTracker t(page_of, commit, &h);
    h.tracker = &t;
    t.page_read(0, 10, 1);
    t.page_read(10, 20, 1);
    t.page_read(20, 30, 1);
    h.end_in_commit = {item(10, 0)};
    t.item_ended(item(0, 0), true);  // commit(10) ends page 10's item from inside
    assert_true((h.commits == Commits{10, 20}));
    assert_int_equal(h.max_depth, 1);  // the commit of 20 came after commit(10) returned
    h.end_in_commit = {item(20, 0)};
    t.page_read(30, 40, 0);
    assert_true((h.commits == Commits{10, 20}));  // page 20 still open
}

void test_ends_from_many_threads_commit_in_order_up_to_the_last_page(void **) {
    Host h;
    CursorTracker t(page_of, commit, &h);
    const uint64_t pages = 200, per_page = 8;
    for (uint64_t p = 0; p < pages; ++p) t.page_read(p, p + 1, per_page);
    std::atomic<uint64_t> next{0};
    auto worker = [&] {
        for (;;) {
            uint64_t k = next.fetch_add(1);
            if (k >= pages * per_page) return;
            // Spread each page's ends over the threads and over time.
            uint64_t p = (k % per_page) * (pages / per_page) + (k / per_page) % (pages / per_page);
            p = (p * 37) % pages;
            t.item_ended(item(p, k % per_page), true);
        }
    };
    std::thread a(worker), b(worker), c(worker);
    worker();
    a.join();
    b.join();
    c.join();
    assert_true(!h.commits.empty());
    for (size_t i = 1; i < h.commits.size(); ++i) assert_true(h.commits[i - 1] < h.commits[i]);
    assert_int_equal(h.commits.back(), pages);
    assert_int_equal(t.committed(), pages);
    assert_int_equal(t.unknown_pages(), 0);
}

}  // namespace

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nothing_is_committed_before_a_page_finishes),
        cmocka_unit_test(test_a_finished_page_waits_for_every_page_before_it),
        cmocka_unit_test(test_pages_finishing_in_order_are_committed_one_by_one),
        cmocka_unit_test(test_an_empty_page_is_committed_once_the_pages_before_it_are),
        cmocka_unit_test(test_spawned_items_hold_their_page_until_they_end),
        cmocka_unit_test(test_an_unfinished_item_holds_the_watermark_at_its_page_for_good),
        cmocka_unit_test(test_ends_of_unknown_or_committed_pages_are_counted_not_applied),
        cmocka_unit_test(test_a_throwing_page_of_makes_an_unknown_page),
        cmocka_unit_test(test_a_throwing_commit_callback_loses_only_that_call),
        cmocka_unit_test(test_without_a_commit_callback_the_watermark_still_advances),
        cmocka_unit_test(test_items_ended_inside_the_commit_callback_commit_after_it_returns),
        cmocka_unit_test(test_ends_from_many_threads_commit_in_order_up_to_the_last_page),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
