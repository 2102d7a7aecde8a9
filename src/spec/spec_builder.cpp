// Spec builder: walks a parsed spec and builds the pipeline through the public C API, so a
// spec can express exactly what C calls can. Errors name the spec position; errors from the
// API keep its message after the position.
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>

#include <cerrno>

#include "spec/spec_builder.hpp"
#include "spec/registry.hpp"
#include "spec/spec_parser.hpp"
#include "util/status.hpp"

namespace fluxus {

const char *fn_kind_name(int32_t kind) {
    static const char *const names[] = {"?",         "map",        "map_batch",      "filter",
                                        "filter_batch", "flat_map", "flat_map_batch", "sink",
                                        "sink_batch", "async_map",  "reduce",         "window",
                                        "route",     "copy",       "key",            "retry_if",
                                        "pull",      "load",       "attach",         "join_input"};
    return kind >= 1 && kind <= FLUXUS_FN_JOIN_INPUT ? names[kind] : "?";
}

namespace {

struct KindInfo {
    const char *name;
    int32_t fn_kind;  // the callback kind it takes (0: none)
    bool fn_required;
};

const KindInfo kKinds[] = {
    {"map", FLUXUS_FN_MAP, true},
    {"map_batch", FLUXUS_FN_MAP_BATCH, true},
    {"filter", FLUXUS_FN_FILTER, true},
    {"filter_batch", FLUXUS_FN_FILTER_BATCH, true},
    {"flat_map", FLUXUS_FN_FLAT_MAP, true},
    {"flat_map_batch", FLUXUS_FN_FLAT_MAP_BATCH, true},
    {"sink", FLUXUS_FN_SINK, true},
    {"sink_batch", FLUXUS_FN_SINK_BATCH, true},
    {"async_map", FLUXUS_FN_ASYNC_MAP, true},
    {"reduce", FLUXUS_FN_REDUCE, true},
    {"window", FLUXUS_FN_WINDOW, true},
    {"batch", FLUXUS_FN_FLAT_MAP_BATCH, true},
    {"loader", FLUXUS_FN_LOAD, true},
    {"join", FLUXUS_FN_WINDOW, true},
    {"router", FLUXUS_FN_ROUTE, true},
    {"broadcast", 0, false},
    {"dedup", 0, false},
    {"throttle", 0, false},
    {"debounce", 0, false},
};

// How a callback of `fn_kind` named `name` is used in a spec (for error hints).
std::string usage_of(int32_t fn_kind, const std::string &name) {
    switch (fn_kind) {
    case FLUXUS_FN_REDUCE: return "reduce(" + name + ")";
    case FLUXUS_FN_WINDOW: return "window(" + name + ", size=N) or join(" + name + ", ...)";
    case FLUXUS_FN_ROUTE: return "router(" + name + ") { label: chain }";
    case FLUXUS_FN_PULL: return "source(" + name + ")";
    case FLUXUS_FN_LOAD: return "loader(" + name + ", attach=...)";
    case FLUXUS_FN_COPY: return "broadcast(copy=" + name + ") or cache_copy=" + name;
    case FLUXUS_FN_KEY: return "the option key=" + name;
    case FLUXUS_FN_RETRY_IF: return "the option retry_if=" + name;
    case FLUXUS_FN_ATTACH: return "the loader option attach=" + name;
    case FLUXUS_FN_JOIN_INPUT: return "the join option input=" + name;
    default: return name;
    }
}

bool k_is(const KindInfo *ki, const char *name) { return strcmp(ki->name, name) == 0; }

const KindInfo *find_kind(const std::string &k) {
    for (const KindInfo &ki : kKinds)
        if (k == ki.name) return &ki;
    return nullptr;
}

// A bare registered name stands for a stage of these kinds.
const char *bare_kind(int32_t fn_kind) {
    switch (fn_kind) {
    case FLUXUS_FN_MAP: return "map";
    case FLUXUS_FN_MAP_BATCH: return "map_batch";
    case FLUXUS_FN_FILTER: return "filter";
    case FLUXUS_FN_FILTER_BATCH: return "filter_batch";
    case FLUXUS_FN_FLAT_MAP: return "flat_map";
    case FLUXUS_FN_FLAT_MAP_BATCH: return "flat_map_batch";
    case FLUXUS_FN_SINK: return "sink";
    case FLUXUS_FN_SINK_BATCH: return "sink_batch";
    case FLUXUS_FN_ASYNC_MAP: return "async_map";
    default: return nullptr;
    }
}

struct Word {
    const char *word;
    int32_t value;
};
const Word kWindows[] = {{"count", FLUXUS_WINDOW_COUNT},
                         {"time", FLUXUS_WINDOW_TIME},
                         {"session", FLUXUS_WINDOW_SESSION},
                         {nullptr, 0}};

class Builder {
public:
    Builder(fluxus_pipeline *h, Registry &r) : h_(h), r_(r) {}

    // The first chain starts at the pipeline's source; each further one at a source of its own.
    // A first statement `pipeline(OPTION=VALUE, ...)` sets pipeline-wide options.
    int32_t build(const std::vector<SpecChain> &chains) {
        size_t start = 0;
        if (!chains.empty() && chains[0].steps.front().kind == "pipeline" &&
            !chains[0].steps.front().merge) {
            if (int32_t rc = pipeline_options(chains[0])) return rc;
            start = 1;
        }
        for (size_t i = start; i < chains.size(); ++i) {
            const SpecStep &first = chains[i].steps.front();
            if (i > start && (first.merge || first.kind != "source" || first.args.empty()))
                return fail(first.pos, "a further chain (after ';') must start with "
                                       "source(PULL), a registered pull source of its own");
            extra_source_ = i > start;
            if (int32_t rc = chain(chains[i], true)) return rc;
        }
        for (const Merge &m : merges_) {
            auto it = names_.find(m.target);
            if (it == names_.end())
                return fail(m.pos, "no stage is named '" + m.target + "' (name one with 'as " +
                                       m.target + "')");
            if (int32_t rc = api(m.pos, fluxus_pipeline_connect(h_, m.from, m.outlet, it->second)))
                return rc;
        }
        return FLUXUS_OK;
    }

private:
    int32_t pipeline_options(const SpecChain &c) {
        const SpecStep &st = c.steps.front();
        if (c.steps.size() > 1 || st.has_block || !st.alias.empty())
            return fail(st.pos, "pipeline(...) sets pipeline options and stands alone: "
                                "pipeline(OPTION=VALUE, ...); then the chains");
        for (const SpecArg &a : st.args) {
            int32_t option = 0;
            int64_t v = 0;
            if (a.key.empty())
                return fail(a.pos, "pipeline(...) takes only OPTION=VALUE arguments");
            if (fluxus_option_get_id(&option, a.key.c_str()) != FLUXUS_OK)
                return fail(a.pos, "unknown pipeline option '" + a.key + "'");
            if (int32_t rc = api(a.pos, fluxus_option_parse_value(&v, option, a.value.c_str())))
                return rc;
            if (int32_t rc = api(a.pos, fluxus_pipeline_set_option(h_, option, v))) return rc;
        }
        return FLUXUS_OK;
    }

    int32_t fail(SpecPos pos, const std::string &what, int32_t code = FLUXUS_EINVAL) {
        char head[48];
        snprintf(head, sizeof head, "spec:%u:%u: ", pos.line, pos.col);
        return set_error(code, head + what);
    }
    // Wraps an API failure with the position of the step that caused it.
    // A bad value (ERANGE), a step where none can go (ESTATE): all spec errors are EINVAL.
    int32_t api(SpecPos pos, int32_t rc) {
        if (rc == FLUXUS_OK) return rc;
        return fail(pos, fluxus_last_error_message(),
                    rc == FLUXUS_ENOMEM ? FLUXUS_ENOMEM : FLUXUS_EINVAL);
    }

    const RegisteredFn *lookup(const SpecArg &a, int32_t kind, const char *role, int32_t *rc) {
        auto it = r_.fns.find(a.value);
        if (a.number || it == r_.fns.end()) {
            *rc = fail(a.pos, std::string("no callback named '") + a.value +
                                  "' is registered (" + role + ")");
            return nullptr;
        }
        if (it->second.kind != kind) {
            *rc = fail(a.pos, "'" + a.value + "' is registered as a " +
                                  fn_kind_name(it->second.kind) + " callback, but " + role +
                                  " needs a " + fn_kind_name(kind) + " callback");
            return nullptr;
        }
        *rc = FLUXUS_OK;
        return &it->second;
    }

    int32_t number(const SpecArg &a, uint64_t max, uint64_t *out) {
        if (!a.number) return fail(a.pos, "option '" + a.key + "' takes a number");
        errno = 0;
        unsigned long long v = strtoull(a.value.c_str(), nullptr, 10);
        if (errno || v > max)
            return fail(a.pos, "option '" + a.key + "': " + a.value + " is out of range (0.." +
                                   std::to_string(max) + ")");
        *out = v;
        return FLUXUS_OK;
    }

    int32_t word(const SpecArg &a, const Word *words, int32_t *out) {
        std::string choices;
        for (const Word *w = words; w->word; ++w) {
            if (!a.number && a.value == w->word) {
                *out = w->value;
                return FLUXUS_OK;
            }
            choices += choices.empty() ? "" : ", ";
            choices += w->word;
        }
        return fail(a.pos, "option '" + a.key + "' is one of " + choices + "; not '" + a.value +
                               "'");
    }

    int32_t chain(const SpecChain &c, bool top) {
        for (size_t i = 0; i < c.steps.size(); ++i) {
            const SpecStep &st = c.steps[i];
            if (st.merge) {
                if (i + 1 != c.steps.size())
                    return fail(c.steps[i + 1].pos, "nothing may follow a merge ('@" + st.kind +
                                                        "' ends its chain)");
                if (!has_attach_) return fail(st.pos, "a merge needs a stage before it");
                // Connected once every stage exists: the target may be named later in the text.
                merges_.push_back(Merge{st.pos, st.kind, attach_stage_, attach_outlet_});
                has_attach_ = false;
                return FLUXUS_OK;
            }
            if (st.kind == "source") {
                if (!top || i != 0) return fail(st.pos, "'source' may only start the spec");
                if (int32_t rc = source(st)) return rc;
                continue;
            }
            if (int32_t rc = stage(st)) return rc;
        }
        return FLUXUS_OK;
    }

    int32_t source(const SpecStep &st) {
        if (st.has_block || !st.alias.empty())
            return fail(st.pos, "'source' takes no block and no name");
        if (st.args.empty()) return FLUXUS_OK;  // the host sets the source
        if (st.args.size() > 1 || !st.args[0].key.empty())
            return fail(st.args[0].pos, "'source' takes one argument: a registered pull source");
        int32_t rc;
        const RegisteredFn *f = lookup(st.args[0], FLUXUS_FN_PULL, "source", &rc);
        if (!f) return rc;
        if (extra_source_) {
            uint32_t idx = 0;
            if (int32_t e = api(st.pos, fluxus_pipeline_add_source(
                                            &idx, h_, st.args[0].value.c_str(),
                                            reinterpret_cast<fluxus_pull_fn>(f->fn),
                                            f->user.user, nullptr)))
                return e;
            has_attach_ = true;
            attach_stage_ = idx;
            attach_outlet_ = 0;
            return FLUXUS_OK;
        }
        return api(st.pos, fluxus_pipeline_set_pull_source(h_, st.args[0].value.c_str(),
                                                           reinterpret_cast<fluxus_pull_fn>(f->fn),
                                                           f->user.user, nullptr));
    }

    int32_t stage(const SpecStep &st) {
        std::string kind = st.kind;
        const KindInfo *ki = find_kind(kind);
        const RegisteredFn *fn = nullptr;
        std::string fn_name;
        std::vector<const SpecArg *> opts;
        size_t positional = 0;
        if (!ki) {
            // A bare registered name.
            auto it = r_.fns.find(kind);
            if (it == r_.fns.end())
                return fail(st.pos, "'" + kind +
                                        "' is neither a stage kind (map, filter, flat_map, sink, "
                                        "router, broadcast, ...) nor a registered callback");
            const char *bk = bare_kind(it->second.kind);
            if (!bk)
                return fail(st.pos, "'" + kind + "' is a " + fn_kind_name(it->second.kind) +
                                        " callback; name its stage kind, e.g. " +
                                        usage_of(it->second.kind, kind));
            ki = find_kind(bk);
            fn = &it->second;
            fn_name = kind;
        }
        for (const SpecArg &a : st.args) {
            if (!a.key.empty()) {
                opts.push_back(&a);
                continue;
            }
            if (++positional > 1 || fn || !ki->fn_kind)
                return fail(a.pos, std::string("unexpected argument '") + a.value + "' for " +
                                       ki->name + (ki->fn_kind ? " (it takes one callback)"
                                                               : " (it takes only options)"));
            int32_t rc;
            fn = lookup(a, ki->fn_kind, ki->name, &rc);
            if (!fn) return rc;
            fn_name = a.value;
        }
        if (ki->fn_required && !fn)
            return fail(st.pos, std::string(ki->name) + " needs a registered " +
                                    fn_kind_name(ki->fn_kind) + " callback, e.g. " + ki->name +
                                    "(my_" + fn_kind_name(ki->fn_kind) + ")");
        std::string name = !st.alias.empty() ? st.alias : !fn_name.empty() ? fn_name : kind;
        if (!st.alias.empty() && names_.count(st.alias))
            return fail(st.alias_pos, "a stage named '" + st.alias + "' is already declared");

        // Options the stage is created with.
        uint64_t size = 0, step = 0, linger = 0, period = 0, inputs = 0;
        int32_t wkind = FLUXUS_WINDOW_COUNT;
        const RegisteredFn *attach = nullptr, *input_of = nullptr;
        for (const SpecArg *a : opts) {
            int32_t rc = FLUXUS_OK;
            if (a->key == "size") rc = number(*a, UINT32_MAX, &size);
            else if (a->key == "step") rc = number(*a, UINT64_MAX / 1000, &step);
            else if (a->key == "linger_us") rc = number(*a, UINT64_MAX / 1000, &linger);
            else if (a->key == "period_us" || a->key == "quiet_us")
                rc = number(*a, UINT64_MAX / 1000, &period);
            else if (a->key == "kind") rc = word(*a, kWindows, &wkind);
            else if (a->key == "inputs") rc = number(*a, 64, &inputs);
            else if (a->key == "attach" && k_is(ki, "loader"))
                attach = lookup(*a, FLUXUS_FN_ATTACH, "option 'attach'", &rc);
            else if (a->key == "input" && k_is(ki, "join"))
                input_of = lookup(*a, FLUXUS_FN_JOIN_INPUT, "option 'input'", &rc);
            if (rc) return rc;
        }
        uint32_t idx = 0;
        const char *nm = name.c_str();
        void *u = fn ? fn->user.user : nullptr;
        int32_t rc;
        std::string k = ki->name;
        if (k == "map") rc = fluxus_pipeline_add_map(&idx, h_, nm, (fluxus_map_fn)fn->fn, u, nullptr);
        else if (k == "map_batch") rc = fluxus_pipeline_add_map_batch(&idx, h_, nm, (fluxus_map_batch_fn)fn->fn, u, nullptr);
        else if (k == "filter") rc = fluxus_pipeline_add_filter(&idx, h_, nm, (fluxus_filter_fn)fn->fn, u, nullptr);
        else if (k == "filter_batch") rc = fluxus_pipeline_add_filter_batch(&idx, h_, nm, (fluxus_filter_batch_fn)fn->fn, u, nullptr);
        else if (k == "flat_map") rc = fluxus_pipeline_add_flat_map(&idx, h_, nm, (fluxus_flat_map_fn)fn->fn, u, nullptr);
        else if (k == "flat_map_batch") rc = fluxus_pipeline_add_flat_map_batch(&idx, h_, nm, (fluxus_flat_map_batch_fn)fn->fn, u, nullptr);
        else if (k == "sink") rc = fluxus_pipeline_add_sink(&idx, h_, nm, (fluxus_sink_fn)fn->fn, u, nullptr);
        else if (k == "sink_batch") rc = fluxus_pipeline_add_sink_batch(&idx, h_, nm, (fluxus_sink_batch_fn)fn->fn, u, nullptr);
        else if (k == "async_map") rc = fluxus_pipeline_add_async_map(&idx, h_, nm, (fluxus_async_map_fn)fn->fn, u, nullptr);
        else if (k == "reduce") rc = fluxus_pipeline_add_reduce(&idx, h_, nm, (fluxus_reduce_fn)fn->fn, u, nullptr);
        else if (k == "window" && step)
            rc = fluxus_pipeline_add_sliding_window(&idx, h_, nm, wkind, size, step, (fluxus_window_fn)fn->fn, u, nullptr);
        else if (k == "window") rc = fluxus_pipeline_add_window(&idx, h_, nm, wkind, size, (fluxus_window_fn)fn->fn, u, nullptr);
        else if (k == "batch") rc = fluxus_pipeline_add_batch(&idx, h_, nm, uint32_t(size), linger, (fluxus_flat_map_batch_fn)fn->fn, u, nullptr);
        else if (k == "loader") {
            if (!attach) return fail(st.pos, "loader needs attach=CALLBACK (a registered attach)");
            rc = fluxus_pipeline_add_loader(&idx, h_, nm, uint32_t(size ? size : 64), linger,
                                            (fluxus_load_fn)fn->fn,
                                            (fluxus_attach_fn)attach->fn, u, nullptr);
        } else if (k == "join") {
            if (!input_of)
                return fail(st.pos, "join needs input=CALLBACK (a registered join_input)");
            rc = fluxus_pipeline_add_join(&idx, h_, nm, uint32_t(inputs),
                                          (fluxus_join_input_fn)input_of->fn,
                                          (fluxus_window_fn)fn->fn, u, nullptr);
        } else if (k == "router") rc = fluxus_pipeline_add_router(&idx, h_, nm, (fluxus_route_fn)fn->fn, u, nullptr);
        else if (k == "broadcast") rc = fluxus_pipeline_add_broadcast(&idx, h_, nm);
        else if (k == "dedup") rc = fluxus_pipeline_add_dedup(&idx, h_, nm);
        else if (k == "throttle") rc = fluxus_pipeline_add_throttle(&idx, h_, nm, period);
        else rc = fluxus_pipeline_add_debounce(&idx, h_, nm, period);
        if (rc) return api(st.pos, rc);
        if (!st.alias.empty()) names_[st.alias] = idx;
        has_attach_ = true;
        attach_stage_ = idx;
        attach_outlet_ = 0;

        // Options set on the stage.
        bool router = k == "router" || k == "broadcast";
        const SpecArg *default_route = nullptr, *cache_pos = nullptr;
        uint64_t cache_entries = 0, cache_ttl = 0;
        const RegisteredFn *cache_copy = nullptr;
        for (const SpecArg *a : opts) {
            const std::string &key = a->key;
            rc = FLUXUS_OK;
            int32_t option = 0;
            if (key == "size" || key == "step" || key == "linger_us" || key == "kind" ||
                key == "period_us" || key == "quiet_us" || key == "inputs" ||
                (key == "attach" && k == "loader") || (key == "input" && k == "join")) {
                continue;  // used above
            } else if (key == "default" && router) {
                default_route = a;  // a route's label: set once the routes exist
            } else if (key == "key" || key == "retry_if" || key == "copy") {
                int32_t fk = key == "key" ? FLUXUS_FN_KEY
                             : key == "copy" ? FLUXUS_FN_COPY : FLUXUS_FN_RETRY_IF;
                const RegisteredFn *f = lookup(*a, fk, ("option '" + key + "'").c_str(), &rc);
                if (f && fk == FLUXUS_FN_KEY)
                    rc = api(a->pos, fluxus_stage_set_key_fn(h_, idx, (fluxus_key_fn)f->fn,
                                                             f->user.user, nullptr));
                else if (f && fk == FLUXUS_FN_COPY)
                    rc = api(a->pos, fluxus_stage_set_copy(h_, idx, (fluxus_copy_fn)f->fn,
                                                           f->user.user, nullptr));
                else if (f)
                    rc = api(a->pos, fluxus_stage_set_retry_predicate(
                                         h_, idx, (fluxus_retry_fn)f->fn, f->user.user, nullptr));
            } else if (key == "cache") {
                rc = number(*a, UINT64_MAX, &cache_entries);
                cache_pos = a;
            } else if (key == "cache_ttl_us") {
                rc = number(*a, UINT64_MAX / 1000, &cache_ttl);
            } else if (key == "cache_copy") {
                cache_copy = lookup(*a, FLUXUS_FN_COPY, "option 'cache_copy'", &rc);
            } else if (fluxus_option_get_id(&option, key.c_str()) == FLUXUS_OK) {
                // Every numbered stage option (FLUXUS_OPT_*) by its name: the table behind
                // fluxus_stage_set_option() is the grammar's too.
                int64_t v = 0;
                if (!(rc = api(a->pos, fluxus_option_parse_value(&v, option, a->value.c_str()))))
                    rc = api(a->pos, fluxus_stage_set_option(h_, idx, option, v));
            } else {
                rc = fail(a->pos, "unknown option '" + key + "' for " + k +
                                      " (see fluxus_pipeline_build in fluxus.h for the options)");
            }
            if (rc) return rc;
        }
        if (cache_pos)
            if (int32_t e = api(cache_pos->pos,
                                fluxus_stage_set_cache(
                                    h_, idx, cache_entries, cache_ttl,
                                    cache_copy ? (fluxus_copy_fn)cache_copy->fn : nullptr,
                                    cache_copy ? cache_copy->user.user : nullptr, nullptr)))
                return e;

        // The block: routes, or the error branch.
        if (router) {
            if (!st.has_block || st.block.empty())
                return fail(st.pos, k + " needs a block of routes: " + k +
                                        "(...) { label: chain; label: chain }");
            for (const SpecBranch &b : st.block)
                if (int32_t e = api(b.pos, fluxus_stage_add_route(nullptr, h_, idx, b.label.c_str())))
                    return e;
            if (default_route) {
                uint32_t r = 0;
                if (default_route->number ||
                    fluxus_stage_get_route_index(&r, h_, idx, default_route->value.c_str()) != 0)
                    return fail(default_route->pos,
                                "default=" + default_route->value + ": no route of that name");
                if (int32_t e = api(default_route->pos, fluxus_stage_set_default_route(h_, idx, r)))
                    return e;
            }
            for (uint32_t r = 0; r < st.block.size(); ++r)
                if (int32_t e = branch_chain(st.block[r], idx, r)) return e;
            has_attach_ = false;  // a router's chains are all in its block
            return FLUXUS_OK;
        }
        for (const SpecBranch &b : st.block) {
            if (b.label != "error")
                return fail(b.pos, "a " + k + " block takes only 'error:' (its error branch); '" +
                                       b.label + "' would be a route, which only routers and "
                                       "broadcasts have");
            if (int32_t e = branch_chain(b, idx, FLUXUS_OUTLET_ERROR)) return e;
        }
        if (st.has_block && !st.block.empty()) {
            // The chain goes on from the stage's main output; a sink has none.
            has_attach_ = k != "sink" && k != "sink_batch";
            if (has_attach_)
                if (int32_t e = api(st.pos, fluxus_pipeline_branch(h_, idx, FLUXUS_OUTLET_MAIN)))
                    return e;
            attach_outlet_ = 0;
            attach_stage_ = idx;
        }
        return FLUXUS_OK;
    }

    int32_t branch_chain(const SpecBranch &b, uint32_t stage, uint32_t outlet) {
        if (int32_t e = api(b.pos, fluxus_pipeline_branch(h_, stage, outlet))) return e;
        attach_stage_ = stage;
        attach_outlet_ = outlet;
        has_attach_ = true;
        return chain(b.chain, false);
    }

    fluxus_pipeline *h_;
    Registry &r_;
    std::map<std::string, uint32_t> names_;
    struct Merge {
        SpecPos pos;
        std::string target;
        uint32_t from, outlet;
    };
    std::vector<Merge> merges_;
    bool has_attach_ = false;  // the source counts once a stage exists
    bool extra_source_ = false;  // building a chain after ';' (its source is a source stage)
    uint32_t attach_stage_ = 0, attach_outlet_ = 0;
};

}  // namespace

int32_t build_from_spec(fluxus_pipeline *h, Registry &r, const char *text) {
    std::vector<SpecChain> chains;
    std::string error;
    if (!parse_spec(text, chains, error)) return set_error(FLUXUS_EINVAL, error);
    Builder b(h, r);
    return b.build(chains);
}

}  // namespace fluxus
