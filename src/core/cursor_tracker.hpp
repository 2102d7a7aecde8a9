// CursorTracker: the low watermark of a cursor source. Every read of the source is a "page"
// named by the cursor it was read from; the tracker counts the page's items that are still
// unfinished (admitted, plus children emitted by flat maps, minus ends) and, in page order,
// commits the cursor after the newest page that is finished along with every page before it.
// The host names an item's page (page_of); ends are reported from wherever items end, on any
// thread, so the watermark is right however parallel, unordered stages reorder items.
// An item that ends unfinished (cancelled, dropped by overflow, failed under fail-fast) stops
// the watermark at its page for good: on restart that page is read again.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <mutex>
#include <unordered_map>

#include "fluxus.h"
#include "util/user_ref.hpp"

namespace fluxus {

class CursorTracker {
public:
    CursorTracker(fluxus_cursor_page_fn page_fn, fluxus_cursor_commit_fn commit, void *user)
        : page_of_(page_fn), commit_(commit), user_(user) {}

    // Source side: a read from `cursor` admitted `n` items; the next read starts at `next`.
    void page_read(uint64_t cursor, uint64_t next, uint64_t n);
    // The page of an item, as the host says (UINT64_MAX if the callback threw).
    uint64_t page_of(uint64_t item) const;
    // Ends: `finished` for delivered, filtered, dead-lettered or skipped items.
    void page_ended(uint64_t page, bool finished);
    void item_ended(uint64_t item, bool finished) { page_ended(page_of(item), finished); }
    // Items emitted by a flat map join their page (the host's page_of says which).
    void items_spawned(const uint64_t *items, size_t n);

    uint64_t committed() const { return committed_.load(std::memory_order_acquire); }
    bool has_committed() const { return has_committed_.load(std::memory_order_acquire); }
    uint64_t unknown_pages() const { return unknown_.load(std::memory_order_relaxed); }

private:
    struct Page {
        uint64_t cursor, next;
        int64_t unfinished;
        bool poisoned;
    };
    void maybe_commit();

    fluxus_cursor_page_fn page_of_;
    fluxus_cursor_commit_fn commit_;
    void *user_;
    std::mutex mu_;
    std::deque<Page> pages_;  // oldest first
    uint64_t first_seq_ = 0;  // sequence number of pages_.front()
    std::unordered_map<uint64_t, uint64_t> seq_of_;  // cursor -> page sequence number
    std::mutex commit_mu_;    // commits are called in order, one at a time
    std::atomic<bool> dirty_{false};
    std::atomic<uint64_t> committed_{0};
    std::atomic<bool> has_committed_{false};
    std::atomic<uint64_t> unknown_{0};  // ends whose page_of named no known page
};

}  // namespace fluxus
