// CursorTracker implementation. Counting is under one mutex; commits run under a second one,
// outside the first, and a thread that finds a commit in progress (or is inside one itself)
// leaves a "dirty" mark for the committing thread to look again, so commits stay in order and
// a commit callback that ends items cannot deadlock.
#include "core/cursor_tracker.hpp"
#include "util/forced_unwind.hpp"

namespace fluxus {

namespace {
// The tracker whose commit callback runs on this thread (its re-entrant commits are deferred).
thread_local const CursorTracker *t_committing = nullptr;
}

uint64_t CursorTracker::page_of(uint64_t item) const {
    try {
        return page_of_(user_, item);
    } FLUXUS_CATCH_ALL {
        return UINT64_MAX;
    }
}

void CursorTracker::page_read(uint64_t cursor, uint64_t next, uint64_t n) {
    {
        std::lock_guard<std::mutex> lock(mu_);
        seq_of_[cursor] = first_seq_ + pages_.size();
        pages_.push_back(Page{cursor, next, int64_t(n), false});
    }
    if (n == 0) maybe_commit();
}

void CursorTracker::items_spawned(const uint64_t *items, size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < n; ++i) {
        auto it = seq_of_.find(page_of(items[i]));
        if (it == seq_of_.end() || it->second < first_seq_) {
            unknown_.fetch_add(1, std::memory_order_relaxed);
            continue;
        }
        ++pages_[it->second - first_seq_].unfinished;
    }
}

void CursorTracker::page_ended(uint64_t page, bool finished) {
    bool front_done = false;
    {
        std::lock_guard<std::mutex> lock(mu_);
        auto it = seq_of_.find(page);
        if (it == seq_of_.end() || it->second < first_seq_) {
            unknown_.fetch_add(1, std::memory_order_relaxed);
            return;
        }
        Page &pg = pages_[it->second - first_seq_];
        --pg.unfinished;
        if (!finished) pg.poisoned = true;
        front_done = it->second == first_seq_ && pg.unfinished == 0 && !pg.poisoned;
    }
    if (front_done) maybe_commit();
}

void CursorTracker::maybe_commit() {
    if (t_committing == this) {
        dirty_.store(true);
        return;
    }
    for (;;) {
        if (!commit_mu_.try_lock()) {
            dirty_.store(true);  // the thread committing now will look again
            return;
        }
        dirty_.store(false);
        uint64_t cursor = 0;
        bool advance = false;
        {
            std::lock_guard<std::mutex> lock(mu_);
            while (!pages_.empty() && pages_.front().unfinished == 0 &&
                   !pages_.front().poisoned) {
                cursor = pages_.front().next;
                advance = true;
                auto it = seq_of_.find(pages_.front().cursor);
                if (it != seq_of_.end() && it->second == first_seq_) seq_of_.erase(it);
                pages_.pop_front();
                ++first_seq_;
            }
        }
        if (advance) {
            committed_.store(cursor, std::memory_order_release);
            has_committed_.store(true, std::memory_order_release);
            if (commit_) {
                const CursorTracker *saved = t_committing;
                t_committing = this;
                try {
                    commit_(user_, cursor);
                } FLUXUS_ON_FORCED_UNWIND((t_committing = saved, commit_mu_.unlock(),
                                           // the item whose end led here has ended already
                                           t_unwind.ended = true)) catch (...) {
                    // A commit callback that throws loses only that notification.
                }
                t_committing = saved;
            }
        }
        commit_mu_.unlock();
        if (!dirty_.load()) return;
    }
}

}  // namespace fluxus
