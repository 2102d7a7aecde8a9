// The pipeline as a graph: where each added stage attaches, routes, branches and merges, the
// checks at start (every outlet leads to a sink, no loops), and the compilation of the graph
// into segments (runs of fused stages behind one queue) wired outlet by outlet.
#include <algorithm>
#include <cstring>
#include <deque>

#include "core/pipeline.hpp"
#include "core/segment.hpp"
#include "util/status.hpp"

namespace fluxus {

namespace {

const char *outlet_name(const Stage &st, uint32_t outlet, char *buf, size_t len) {
    if (outlet == FLUXUS_OUTLET_ERROR)
        snprintf(buf, len, "the error outlet of '%s'", st.name.c_str());
    else if (st.is_router() && outlet < st.route_names.size())
        snprintf(buf, len, "route '%s' of '%s'", st.route_names[outlet].c_str(), st.name.c_str());
    else
        snprintf(buf, len, "outlet %u of '%s'", outlet, st.name.c_str());
    return buf;
}

}  // namespace

void Pipeline::attach_new_stage(Stage *st) {
    if (!st->is_sink() && !st->is_router()) st->outlets.assign(1, nullptr);
    if (attach_stage_)
        *outlet_slot(*attach_stage_, attach_outlet_) = st;
    else
        source_to_ = st;
    st->inputs = 1;
    // A chain goes on from the new stage, unless it ends the chain (a sink) or splits it (a
    // router: its routes are attached with branch()).
    attach_open_ = !st->is_sink() && !st->is_router();
    attach_stage_ = st;
    attach_outlet_ = 0;
}

Stage **Pipeline::outlet_slot(Stage &st, uint32_t outlet) {
    if (outlet == FLUXUS_OUTLET_ERROR) return &st.error_to;
    return outlet < st.outlets.size() ? &st.outlets[outlet] : nullptr;
}

int32_t Pipeline::free_outlet(uint32_t stage, uint32_t outlet, const char *what, Stage **out) {
    Stage *st = nullptr;
    if (int32_t rc = stage_for_option(stage, what, &st)) return rc;
    Stage **slot = outlet_slot(*st, outlet);
    char buf[160];
    if (!slot) {
        if (st->is_sink())
            return set_errorf(FLUXUS_EINVAL,
                              "%s: sink '%s' has no outlet %u (a sink has only its error outlet, "
                              "FLUXUS_OUTLET_ERROR)",
                              what, st->name.c_str(), outlet);
        if (st->is_router())
            return set_errorf(FLUXUS_EINVAL, "%s: %s '%s' has %zu routes; there is no route %u",
                              what, stage_kind_name(st->kind), st->name.c_str(),
                              st->outlets.size(), outlet);
        return set_errorf(FLUXUS_EINVAL,
                          "%s: stage '%s' has outlet 0 (FLUXUS_OUTLET_MAIN) and "
                          "FLUXUS_OUTLET_ERROR; there is no outlet %u",
                          what, st->name.c_str(), outlet);
    }
    if (*slot)
        return set_errorf(FLUXUS_EINVAL, "%s: %s already leads to '%s'", what,
                          outlet_name(*st, outlet, buf, sizeof buf), (*slot)->name.c_str());
    if (outlet == FLUXUS_OUTLET_ERROR && st->error_route)
        return set_errorf(FLUXUS_EINVAL,
                          "%s: stage '%s' already routes its failures to another pipeline "
                          "(fluxus_stage_set_error_route)",
                          what, st->name.c_str());
    *out = st;
    return FLUXUS_OK;
}

int32_t Pipeline::branch(uint32_t stage, uint32_t outlet) {
    Stage *st = nullptr;
    if (int32_t rc = free_outlet(stage, outlet, "branch", &st)) return rc;
    attach_stage_ = st;
    attach_outlet_ = outlet;
    attach_open_ = true;
    return FLUXUS_OK;
}

bool Pipeline::reaches(const Stage *from, const Stage *to) const {
    std::vector<const Stage *> todo{from};
    std::vector<bool> seen(stages_.size(), false);
    while (!todo.empty()) {
        const Stage *s = todo.back();
        todo.pop_back();
        if (s == to) return true;
        if (seen[s->index]) continue;
        seen[s->index] = true;
        for (const Stage *o : s->outlets)
            if (o) todo.push_back(o);
        if (s->error_to) todo.push_back(s->error_to);
    }
    return false;
}

int32_t Pipeline::connect(uint32_t from, uint32_t outlet, uint32_t to) {
    Stage *src = nullptr, *dst = nullptr;
    if (int32_t rc = free_outlet(from, outlet, "connect", &src)) return rc;
    if (int32_t rc = stage_for_option(to, "connect", &dst)) return rc;
    char buf[160];
    if (dst->is_source())
        return set_errorf(FLUXUS_EINVAL, "connect: '%s' is a source; it takes no input",
                          dst->name.c_str());
    if (reaches(dst, src))
        return set_errorf(FLUXUS_EINVAL,
                          "connect: %s into '%s' would close a loop (stages form a graph without "
                          "loops; to try a stage again use fluxus_stage_set_retry)",
                          outlet_name(*src, outlet, buf, sizeof buf), dst->name.c_str());
    *outlet_slot(*src, outlet) = dst;
    ++dst->inputs;
    if (attach_open_ && attach_stage_ == src && attach_outlet_ == outlet) attach_open_ = false;
    return FLUXUS_OK;
}

int32_t Pipeline::add_source_stage(uint32_t *out, const char *name, fluxus_pull_fn fn,
                                   void *user, fluxus_user_free_fn user_free) {
    if (int32_t rc = check_building("add source")) return rc;
    if (!fn) return set_error(FLUXUS_EINVAL, "add source: the callback is NULL");
    std::unique_ptr<SourceSpec> spec(new SourceSpec());
    Stage *st = nullptr;
    if (int32_t rc = new_stage(StageKind::source, name, reinterpret_cast<void (*)()>(fn), user,
                               user_free, &st))
        return rc;
    try {
        spec->name = st->name;
    } catch (...) {
        stages_.pop_back();  // refused (out of memory): the stage and its `user` were not kept
        throw;
    }
    spec->kind = SourceKind::pull;
    spec->fn = st->fn;
    spec->user = UserRef{user, nullptr};  // the stage owns `user`
    spec->poll_interval_us = source_.poll_interval_us;
    st->source = std::move(spec);
    st->outlets.assign(1, nullptr);
    // A new chain starts here; the one being built is resumed with branch().
    attach_stage_ = st;
    attach_outlet_ = 0;
    attach_open_ = true;
    if (out) *out = st->index;
    return FLUXUS_OK;
}

int32_t Pipeline::add_route(uint32_t stage, const char *name, uint32_t *out) {
    Stage *st = nullptr;
    if (int32_t rc = stage_for_option(stage, "add route", &st)) return rc;
    if (!st->is_router())
        return set_errorf(FLUXUS_EINVAL, "add route: stage '%s' is a %s, not a router or broadcast",
                          st->name.c_str(), stage_kind_name(st->kind));
    if (!name || !*name) return set_error(FLUXUS_EINVAL, "add route: the name is NULL or empty");
    if (std::find(st->route_names.begin(), st->route_names.end(), name) != st->route_names.end())
        return set_errorf(FLUXUS_EINVAL, "add route: '%s' already has a route named '%s'",
                          st->name.c_str(), name);
    if (st->outlets.size() >= FLUXUS_MAX_ROUTES)
        return set_errorf(FLUXUS_ERANGE, "add route: '%s' has %u routes, the most allowed",
                          st->name.c_str(), FLUXUS_MAX_ROUTES);
    st->route_names.emplace_back(name);
    st->outlets.push_back(nullptr);
    if (out) *out = uint32_t(st->outlets.size() - 1);
    return FLUXUS_OK;
}

int32_t Pipeline::route_index(uint32_t stage, const char *name, uint32_t *out) const {
    if (stage >= stages_.size())
        return set_errorf(FLUXUS_ENOTFOUND, "route index: pipeline '%s' has no stage %u",
                          name_.c_str(), stage);
    const Stage &st = *stages_[stage];
    for (size_t r = 0; r < st.route_names.size(); ++r)
        if (st.route_names[r] == name) {
            *out = uint32_t(r);
            return FLUXUS_OK;
        }
    return set_errorf(FLUXUS_ENOTFOUND, "route index: '%s' has no route named '%s'",
                      st.name.c_str(), name);
}

int32_t Pipeline::set_default_route(uint32_t stage, uint32_t route) {
    Stage *st = nullptr;
    if (int32_t rc = stage_for_option(stage, "set default route", &st)) return rc;
    if (!st->is_router() || !st->fn)
        return set_errorf(FLUXUS_EINVAL, "set default route: stage '%s' is not a router",
                          st->name.c_str());
    if (route != UINT32_MAX && route >= st->outlets.size())
        return set_errorf(FLUXUS_ENOTFOUND, "set default route: router '%s' has no route %u",
                          st->name.c_str(), route);
    st->default_route = route;
    return FLUXUS_OK;
}

int32_t Pipeline::validate_graph() {
    std::vector<Stage *> roots;
    if (source_to_) roots.push_back(source_to_);
    for (auto &sp : stages_)
        if (sp->is_source()) roots.push_back(sp.get());
    if (source_.kind != SourceKind::none && !source_to_)
        return set_errorf(FLUXUS_EINVAL,
                          "start: pipeline '%s': its source feeds no stage (it must lead to a "
                          "sink)",
                          name_.c_str());
    if (roots.empty())
        return set_errorf(FLUXUS_EINVAL,
                          "start: pipeline '%s' has no stages (it must end with a sink)",
                          name_.c_str());
    char buf[160];
    for (auto &sp : stages_) {
        Stage &st = *sp;
        if (st.is_router()) {
            if (st.outlets.empty())
                return set_errorf(FLUXUS_EINVAL,
                                  "start: %s '%s' has no routes (fluxus_stage_add_route)",
                                  st.fn ? "router" : "broadcast", st.name.c_str());
            if (!st.fn && st.outlets.size() > 1 && !st.copy)
                return set_errorf(FLUXUS_EINVAL,
                                  "start: broadcast '%s' has %zu routes but no copy callback "
                                  "(fluxus_stage_set_copy)",
                                  st.name.c_str(), st.outlets.size());
            if (st.workers > 1)
                return set_errorf(FLUXUS_EINVAL,
                                  "start: %s '%s' has %u workers; it runs on one",
                                  st.fn ? "router" : "broadcast", st.name.c_str(), st.workers);
        }
        for (uint32_t r = 0; r < st.outlets.size(); ++r)
            if (!st.outlets[r])
                return set_errorf(FLUXUS_EINVAL,
                                  "start: pipeline '%s' does not end with a sink: %s leads "
                                  "nowhere",
                                  name_.c_str(), outlet_name(st, r, buf, sizeof buf));
    }
    // Topological order (Kahn). Every stage hangs from the source, and connect() refuses loops,
    // so this never fails; it is checked anyway.
    std::vector<uint32_t> indeg(stages_.size(), 0);
    for (auto &sp : stages_) {
        for (Stage *o : sp->outlets) ++indeg[o->index];
        if (sp->error_to) ++indeg[sp->error_to->index];
    }
    topo_.clear();
    std::deque<Stage *> ready;
    for (Stage *r : roots)
        if (indeg[r->index] == 0) ready.push_back(r);
    while (!ready.empty()) {
        Stage *s = ready.front();
        ready.pop_front();
        topo_.push_back(s);
        auto edge = [&](Stage *o) {
            if (o && --indeg[o->index] == 0) ready.push_back(o);
        };
        for (Stage *o : s->outlets) edge(o);
        edge(s->error_to);
    }
    if (topo_.size() != stages_.size())
        return set_errorf(FLUXUS_EINVAL, "start: pipeline '%s' has a loop or a detached stage",
                          name_.c_str());
    return FLUXUS_OK;
}

// ---------------------------------------------------------------------------------------------
// Compilation into segments

int32_t Pipeline::build_segments() {
    std::vector<Segment *> seg_of(stages_.size(), nullptr);
    auto new_segment = [&](Stage *head, bool pull) {
        std::unique_ptr<Segment> seg(new Segment());
        seg->p = this;
        seg->pull_input = pull;
        if (head) {
            seg->workers = head->workers;
            seg->keyed = head->per_key();
            seg->ordered = head->workers > 1 && head->order == FLUXUS_ORDER_ORDERED;
            seg->input.reset(new ItemQueue(seg->keyed ? head->workers : 1, head->capacity));
            head->queue = seg->input.get();
            if (seg->ordered)
                seg->reorder.init(head->reorder_window ? head->reorder_window : 4 * head->workers);
            seg->stages.push_back(head);
            seg_of[head->index] = seg.get();
            if (head->is_async())
                head->async.reset(new AsyncSlots(head->index, head->in_flight,
                                                 head->order == FLUXUS_ORDER_ORDERED,
                                                 head->timeout_ns));
        }
        segments_.push_back(std::move(seg));
        return segments_.back().get();
    };
    // The pipeline's own pull source gets a segment with no input; a push source feeds the
    // queue of its stage's segment (push_seg_).
    bool pull = source_.kind != SourceKind::push && source_.kind != SourceKind::none;
    Segment *source_seg = pull ? new_segment(nullptr, true) : nullptr;
    if (source_seg) source_seg->source = &source_;
    // The producer of each stage fed by exactly one ordinary outlet (fusion candidates).
    std::vector<Stage *> sole_from(stages_.size(), nullptr);
    for (auto &sp : stages_)
        if (sp->outlets.size() == 1 && !sp->is_router() && sp->error_to != sp->outlets[0])
            sole_from[sp->outlets[0]->index] = sp.get();
    for (Stage *st : topo_) {
        if (st->is_source()) {  // an extra pull source: a segment of its own, like the source
            Segment *s = new_segment(nullptr, true);
            s->source = st->source.get();
            s->source_stage = st;
            seg_of[st->index] = s;
            continue;
        }
        // Fused behind its only producer when that producer's whole output comes here, both
        // run on one worker, and nothing else needs a queue in front of this stage.
        Segment *host = nullptr;
        if (fusion_ && st->inputs == 1 && st->workers == 1 &&
            st->overflow == FLUXUS_OVERFLOW_BLOCK && !st->needs_own_segment()) {
            Stage *from = sole_from[st->index];
            if (st == source_to_)
                host = source_seg;
            else if (from && seg_of[from->index]->workers == 1)
                host = seg_of[from->index];
        }
        if (host) {
            host->stages.push_back(st);
            seg_of[st->index] = host;
        } else {
            new_segment(st, false);
        }
    }
    // Wire each segment's outlets (its tail stage's) and its head's error branch, and count the
    // producers of every queue: each upstream segment closes it once, after its last worker.
    std::vector<uint32_t> producers(segments_.size(), 0);
    std::vector<Segment *> all;
    for (auto &sp : segments_) all.push_back(sp.get());
    auto index_of = [&](Segment *s) {
        return size_t(std::find(all.begin(), all.end(), s) - all.begin());
    };
    for (Segment *seg : all) {
        Stage *tail = seg->stages.empty() ? seg->source_stage : seg->stages.back();
        if (!tail)
            seg->outs.push_back(seg_of[source_to_->index]);
        else
            for (Stage *o : tail->outlets) seg->outs.push_back(seg_of[o->index]);
        seg->split = tail && tail->is_router();
        seg->next = seg->split || seg->outs.empty() ? nullptr : seg->outs[0];
        if (Stage *h = seg->head())
            if (h->error_to) seg->error_out = seg_of[h->error_to->index];
        seg->targets = seg->outs;
        if (seg->error_out) seg->targets.push_back(seg->error_out);
        std::sort(seg->targets.begin(), seg->targets.end());
        seg->targets.erase(std::unique(seg->targets.begin(), seg->targets.end()),
                           seg->targets.end());
        for (Segment *t : seg->targets) ++producers[index_of(t)];
    }
    if (source_.kind == SourceKind::push)  // the host, which closes it with close_input()
        ++producers[index_of(seg_of[source_to_->index])];
    for (size_t i = 0; i < all.size(); ++i) {
        Segment &seg = *all[i];
        if (seg.input) seg.input->set_producers(producers[i]);
        // Per-item stages with several workers share their batches (segment_share.cpp), except
        // per-key ones (a key's items stay on one worker) and heads whose worker does more than
        // run a batch for them (a rate limiter's held items, a breaker's guarded calls).
        if (Stage *h = seg.head())
            seg.shares = seg.workers > 1 && !seg.keyed && seg.next && !seg.split &&
                         (h->kind == StageKind::map || h->kind == StageKind::filter ||
                          h->kind == StageKind::flat_map) &&
                         !h->rate_limiter && !h->breaker;
        for (uint32_t w = 0; w < seg.workers; ++w)
            seg.tasks.emplace_back(new SegmentWorker(rt_, &seg, w));
    }
    if (source_.kind == SourceKind::push) {
        push_seg_ = seg_of[source_to_->index];
        push_queue_ = push_seg_->input.get();
    }
    return FLUXUS_OK;
}

}  // namespace fluxus
