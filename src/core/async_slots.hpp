// AsyncSlots: the in-flight table of an async map stage. Each started item holds one slot until
// it completes, times out or is cancelled; the slot count is the stage's in-flight limit (in
// ordered mode a completed item keeps its slot until everything started before it has gone on,
// so the reorder window counts toward the limit).
//
// A completion token names (stage, slot, generation). The generation changes every time a slot
// ends, so a token that was already used, timed out or cancelled is recognised and refused, never
// applied to the slot's next item. Generations start at a random base per table, so a token of
// another pipeline (or another run) is refused too, except with probability about 2^-32. Completions arrive from any thread under the table's mutex;
// the stage's worker task collects them in batches.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

namespace fluxus {

class Task;

class AsyncSlots {
public:
    // How an item left the table.
    enum class End : uint8_t { completed, failed, timed_out };
    struct Ended {
        uint64_t item;  // the completion's item (completed/failed) or the started one (timed out)
        int32_t status;
        End how;
        uint32_t attempt;  // 1 for the first call of the stage on this item
        uint64_t epoch;    // circuit breaker epoch the call was allowed in (0: none)
        uint32_t slot;     // timed out: the slot to pass to finish_timeout()
        uint64_t token;    // timed out: the item's completion token (for the cancel hook)
        std::unique_ptr<std::string> text;  // failed: the completion's text (fluxus_pipeline_fail_async)
    };

    AsyncSlots(uint32_t stage_index, uint32_t capacity, bool ordered, uint64_t timeout_ns);

    // ---- worker side ----
    uint32_t room();
    uint32_t in_use();
    // Takes a free slot for `item` (there must be room) and returns its completion token.
    uint64_t begin(uint64_t item, uint64_t now, uint32_t attempt = 1, uint64_t epoch = 0);
    // The callback refused the item: frees its slot unless the host already completed it.
    // Returns true if freed (the caller then fails the item, which fluxus still owns).
    bool abort(uint64_t token);
    // Moves completed items (in start order when ordered) and items whose timeout passed at
    // `now` into `out`. Returns the earliest pending timeout deadline, or UINT64_MAX.
    uint64_t collect(uint64_t now, std::vector<Ended> &out);
    // A timed-out item stays in its slot ("timing out") while the worker fails it, since the
    // host still owns it; this frees the slot. A completion from another thread meanwhile waits
    // for this, then is refused; from the worker's own thread (a dead-letter callback) it is
    // refused at once.
    void finish_timeout(uint32_t slot);
    // Ends everything in flight as cancelled. Completed items not yet collected (owned by fluxus
    // again) are appended to `owned`; the pending ones (the host's) to `abandoned`, with their
    // completion tokens (item, token pairs), for the stage's cancel hook; returns how many
    // host-owned items were pending.
    struct Abandoned {
        uint64_t item, token;
    };
    size_t cancel_all(std::vector<uint64_t> &owned, std::vector<Abandoned> *abandoned = nullptr);
    // The task to notify on completions; set to null before that task is destroyed.
    void set_worker(Task *t);

    // ---- host side ----
    // Applies a completion. Returns FLUXUS_OK, or the status explaining why the token was
    // refused (FLUXUS_ETIMEDOUT late, FLUXUS_ECANCELED, FLUXUS_ESTATE used or refused item,
    // FLUXUS_EINVAL not a token of this stage); `why` gets a static message. `text` (a failed
    // completion's, may be null) is kept with the item only if the completion is accepted.
    int32_t complete(uint64_t token, int32_t status, uint64_t out, const char **why,
                     std::unique_ptr<std::string> text = nullptr);

    static uint32_t token_stage(uint64_t token) { return uint32_t(token >> 52); }

    std::atomic<uint64_t> timed_out{0};  // items ended by the stage timeout
    std::atomic<uint64_t> late{0};       // completions that arrived after their timeout

private:
    enum class State : uint8_t { free, pending, done, timing_out };
    enum class Reason : uint8_t { none, completed, timed_out, cancelled, refused };
    struct Slot {
        uint32_t gen = 0;
        State state = State::free;
        int32_t status = 0;
        uint64_t item = 0;   // started item
        uint64_t out = 0;    // completion's item
        uint64_t start = 0;
        uint32_t attempt = 1;
        uint64_t epoch = 0;
        uint32_t ended_gen = 0;  // the generation that ended last, and how
        Reason ended_how = Reason::none;
        std::unique_ptr<std::string> text;  // a failed completion's text (null: none)
    };
    struct Started {
        uint32_t slot;
        uint32_t gen;
    };
    uint64_t token_of(uint32_t slot) const;
    void release(uint32_t slot, Reason how);
    void compact_started();
    void remember_timeout(uint64_t token);

    std::mutex mu_;
    uint32_t base_;  // every slot's first generation
    uint64_t stage_bits_;
    bool ordered_;
    uint64_t timeout_ns_;
    std::vector<Slot> slots_;
    std::vector<uint32_t> free_;
    std::deque<Started> started_;  // start order: ordered output and timeouts (lazy deletion)
    std::vector<uint32_t> done_;   // unordered: completed slots awaiting the worker
    // Tokens that timed out, so their late completion is recognised even after the slot was
    // reused; bounded (oldest forgotten first), then such a completion is merely stale.
    std::unordered_set<uint64_t> timed_out_tokens_;
    std::deque<uint64_t> timed_out_order_;
    Task *worker_ = nullptr;
    std::thread::id timeout_thread_;  // the thread handling the item that is timing out
};

}  // namespace fluxus
