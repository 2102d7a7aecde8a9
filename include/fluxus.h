/*
 * fluxus.h — the public C interface of fluxus, an embeddable pipeline engine.
 *
 * The contract:
 *  - Only what is declared in this file is public. Everything else in the library is internal
 *    and may change at any time.
 *  - Stability: 0.x makes no ABI promise; each 0.y is its own ABI (soname libfluxus.so.0.y).
 *    From 1.0 on, the same FLUXUS_VERSION_MAJOR means the same ABI for the stable tier: a
 *    program built against 1.x runs against any later 1.y library; additions arrive as new
 *    functions and options, never as changed signatures. The experimental tier (join, loader
 *    and cache, sliding windows, the cursor source, registries and the spec language) is
 *    declared only when FLUXUS_EXPERIMENTAL is defined before this header is included, is
 *    exported under a version node of its own, and may change in any release. Declarations
 *    marked FLUXUS_DEPRECATED("...") still work and say what replaces them; they go away at
 *    the next major version (before 1.0: at the next 0.y). "@since X.Y" says when a
 *    declaration appeared.
 *  - Threading, by default: every function may be called from any thread, and objects may be
 *    used from several threads at once unless the function's "Thread safety:" line says
 *    otherwise. Callbacks are called without any fluxus lock held.
 *  - Ownership: an `out` object belongs to the caller and is released with its matching
 *    `fluxus_*_free`. Strings passed in are copied. Strings returned are borrowed; their
 *    lifetime is stated.
 *  - Registrations: every function that stores a `user` pointer also takes a `user_free` (may
 *    be NULL). Ownership of `user` passes to fluxus only on FLUXUS_OK. On any other return
 *    (bad or freed handle, NULL callback, wrong state, bad argument, out of memory) fluxus has
 *    kept nothing and never calls that `user_free`: the caller still owns `user`. After
 *    FLUXUS_OK, fluxus calls `user_free` exactly once, when it drops `user`: when the object
 *    holding the registration is freed (a timer: once it has run or was cancelled), or when a
 *    later call replaces the registration. Setters that may be called again (log, item
 *    destructor, dead letter, key function, retry predicate, copy, cache, breaker state
 *    callback) replace the previous registration, whose `user_free` runs during the replacing
 *    call, or, if that callback is running at the moment, as soon as it returns. A NULL
 *    callback, where one is allowed, is a registration like another: its `user` is kept and
 *    released the same way. What cannot be replaced (a pipeline's source, a registry name)
 *    refuses a second registration with an error, which takes nothing. `user_free` runs on the
 *    thread that drops `user` (the one freeing or replacing; for a timer, the one that ran or
 *    cancelled it).
 *  - Errors: functions return FLUXUS_OK (0) or a negative FLUXUS_E* code, never throw, never
 *    abort on bad input. fluxus_last_error_message() describes the last failure on the calling
 *    thread. Misuse (NULL or freed handles, calls in the wrong state, invalid options) returns a
 *    code; using a handle after it was freed is detected on a best-effort basis and stays
 *    forbidden.
 *  - Handles and frees: a host may free a handle on one thread while other threads are still
 *    calling functions that take it (a garbage collector's finalizer, a shutdown path). Every call
 *    holds the handles it takes for its whole duration, and a free waits for such calls before it
 *    destroys anything. A call that overlaps the free of its handle therefore either runs as if the
 *    free came after it (its own return codes) or finds the handle freed and returns FLUXUS_EINVAL;
 *    it never touches freed memory. Calls that block inside the object are woken by the free rather
 *    than waited for: fluxus_pipeline_wait(), _drain() and a blocking push return FLUXUS_ECANCELED
 *    (a pipeline's free cancels it first, so an overlapping call may also see what a cancel causes:
 *    FLUXUS_ESTATE from a building call, FLUXUS_ECANCELED from fluxus_pipeline_start(),
 *    FLUXUS_ECANCELED or FLUXUS_ECLOSED from a push), a limiter acquire returns FLUXUS_ECANCELED,
 *    and fluxus_runtime_run_for() returns FLUXUS_ECANCELED. Of two frees of one handle, one returns
 *    FLUXUS_OK and the other FLUXUS_EINVAL. A runtime's free also cancels its pipelines, whose
 *    handles stay valid: a call on such a pipeline that overlaps the runtime's free returns its own
 *    codes, which for fluxus_pipeline_start() are FLUXUS_OK, FLUXUS_ESTATE (the runtime is gone) or
 *    FLUXUS_ECANCELED (cancelled while starting); a wait, drain or push that it wakes returns
 *    FLUXUS_ECANCELED. Because they wait for the calls on their handle, the frees of a runtime, a
 *    pipeline and a circuit breaker return FLUXUS_EINCALLBACK (and free nothing) when called from
 *    inside any fluxus callback, or from a thread that is itself inside a fluxus call; the frees of
 *    limiters and registries, whose calls never wait for a callback, may be called from callbacks.
 *    Holding a handle costs a few atomic operations per call, never anything per item.
 *  - The library writes nothing to stdout or stderr; diagnostics go to the log callback.
 *  - Threads that end inside a callback: on glibc, pthread_exit() and pthread_cancel() unwind
 *    the thread's stack (a "forced unwind"; Python up to 3.13 ends its threads that way when
 *    the interpreter exits). fluxus lets such an unwind pass through and stays consistent, for
 *    every callback kind in this header: the items of the interrupted call stay with the host
 *    (they count as cancelled and the item destructor is not called for them: the item of a
 *    per-item callback, key function, copy, selector, dead-letter callback or route observer;
 *    every item given to a batch, window, join or load call), every other item the thread held
 *    is cancelled, the pipeline is cancelled and ends with FLUXUS_ECANCELED, and a lost fluxus
 *    thread (a worker, or the loop thread that runs host timers) is replaced by another. The
 *    stats add up and every other item is still destroyed exactly once. A callback that holds
 *    no item (log, thread hook, timer, breaker state, async cancel hook, cursor commit, worker
 *    hook, the item destructor, whose item has then ended) leaves nothing with the host. A
 *    thread ended outside the pipeline's own work (a host timer, a thread hook, the wake-up
 *    callback, a key function that a push runs) cancels no pipeline, and a worker close hook
 *    runs after its worker's last item (its pipeline may end with FLUXUS_OK). Not covered:
 *    `user_free` callbacks (a thread ended in one cuts short the call that was releasing it).
 *    A sliding window's items stay held for later windows: the host keeps the items of the
 *    interrupted call, and the window drops them without destroying them. Other platforms do
 *    not unwind on pthread_exit(), and a thread ended that way inside a callback is a host
 *    error there. A
 *    fluxus built with libc++ (clang -stdlib=libc++) cannot let a forced unwind through either:
 *    libc++abi terminates the process when it is rethrown. Hosts that end threads this way
 *    need a fluxus built with libstdc++.
 *
 * An item is one 64-bit word: an integer, or a pointer cast to uint64_t. fluxus never looks
 * inside it; a pipeline may be given an item destructor that is called exactly once for every
 * item that does not reach a sink (except items whose ownership went elsewhere: flat-map
 * inputs kept with fluxus_emitter_keep_input(), async items that timed out while the host held
 * them, items handed to another pipeline by an error route, and items whose callback ended its
 * thread: see "Threads that end inside a callback" above).
 */
#ifndef FLUXUS_H
#define FLUXUS_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#if defined(FLUXUS_BUILDING)
#define FLUXUS_API __declspec(dllexport)
#else
#define FLUXUS_API __declspec(dllimport)
#endif
#elif defined(__GNUC__)
#define FLUXUS_API __attribute__((visibility("default")))
#else
#define FLUXUS_API
#endif

/* Marks a declaration that still works but will go away; the message says what replaces it. */
#if defined(__GNUC__) || defined(__clang__)
#define FLUXUS_DEPRECATED(msg) __attribute__((deprecated(msg)))
#elif defined(_MSC_VER)
#define FLUXUS_DEPRECATED(msg) __declspec(deprecated(msg))
#else
#define FLUXUS_DEPRECATED(msg)
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------------
 * Library: version, errors, diagnostics
 * ------------------------------------------------------------------------------------------- */

#define FLUXUS_VERSION_MAJOR 0
#define FLUXUS_VERSION_MINOR 4
#define FLUXUS_VERSION_PATCH 0
#define FLUXUS_VERSION_NUMBER \
    (FLUXUS_VERSION_MAJOR * 10000 + FLUXUS_VERSION_MINOR * 100 + FLUXUS_VERSION_PATCH)
#define FLUXUS_VERSION_STRING "0.4.0"

/* Status codes. Values are pinned and never reused. */
#define FLUXUS_OK 0
#define FLUXUS_EINVAL (-1)      /* NULL or freed handle, NULL out-pointer, bad argument */
#define FLUXUS_ESTATE (-2)      /* call not allowed in the object's current state */
#define FLUXUS_ENOMEM (-3)      /* out of memory */
#define FLUXUS_ERANGE (-4)      /* option value out of its documented range */
#define FLUXUS_EFULL (-5)       /* queue full (try-push, or the FAIL overflow policy) */
#define FLUXUS_ETIMEDOUT (-6)   /* a wait or deadline expired */
#define FLUXUS_ECANCELED (-7)   /* the pipeline was cancelled; returned by a callback: its item
                                   ends as cancelled, not failed */
#define FLUXUS_ECLOSED (-8)     /* input already closed (push after close-input) */
#define FLUXUS_EINCALLBACK (-9) /* function may not be called from inside a fluxus callback */
#define FLUXUS_ECALLBACK (-10)  /* a callback failed (see the failure's own status) */
#define FLUXUS_EEXCEPTION (-11) /* a C++ exception escaped a callback and was caught */
#define FLUXUS_EFAILED (-12)    /* the pipeline stopped on a fail-fast error */
#define FLUXUS_EDROPPED (-13)   /* item dropped by an overflow policy */
#define FLUXUS_ENOTFOUND (-14)  /* no such stage, timer or object */
#define FLUXUS_ESOURCE (-15)    /* the source callback reported an error */
#define FLUXUS_ELIMITED (-16)   /* no token or permit available in time (rate or concurrency
                                   limiter) */
#define FLUXUS_ECIRCUITOPEN (-17) /* refused by an open circuit breaker */
#define FLUXUS_ENOROUTE (-18)   /* a router chose no route and has no default route */
#define FLUXUS_EINTERNAL (-19)  /* a fault inside fluxus (a bug: please report it with the
                                   message); never the caller's argument (@since 0.4) */
#define FLUXUS_ENOTSUP (-20)    /* this platform or build lacks the feature (@since 0.4) */

/**
 * Version of the library actually loaded, as "MAJOR.MINOR.PATCH".
 * @return a static string; never NULL.
 * Thread safety: any thread.
 */
FLUXUS_API const char *fluxus_version(void);

/**
 * Version of the library actually loaded, as FLUXUS_VERSION_NUMBER computes it. Bindings compare
 * it with the header they were built against.
 * Thread safety: any thread.
 */
FLUXUS_API int32_t fluxus_version_number(void);

/**
 * Human-readable description of a status code.
 * @return a static string; never NULL. Unknown negative codes give "unknown error"; positive
 *         codes (which only callbacks return) give "callback-defined error".
 * Thread safety: any thread.
 */
FLUXUS_API const char *fluxus_strerror(int32_t status);

/**
 * Symbolic name of a status code ("FLUXUS_EINVAL"), for bindings that map codes to exception
 * classes.
 * @return a static string; never NULL ("FLUXUS_UNKNOWN" for unknown codes).
 * Thread safety: any thread.
 */
FLUXUS_API const char *fluxus_err_name(int32_t status);

/**
 * Size in bytes, NUL included, of the longest last-error message. A longer message is cut at a
 * UTF-8 character boundary and ends in "...". It stays the same for the same
 * FLUXUS_VERSION_MAJOR, so a buffer of this size always holds the whole message.
 */
#define FLUXUS_ERROR_MESSAGE_MAX 1024

/**
 * Details of the last failed fluxus call on the calling thread: which object, stage, option and
 * value were at fault. A failing call replaces it and other calls may clear it; the four
 * functions that only read status (fluxus_last_error_message(), fluxus_last_error_copy(),
 * fluxus_strerror(), fluxus_err_name()) never change it.
 * @return a thread-local string of at most FLUXUS_ERROR_MESSAGE_MAX - 1 bytes, borrowed, valid
 *         until the next fluxus call on this thread; never NULL ("" when nothing failed yet).
 *         Hosts whose code may move to another OS thread between two C calls (Go goroutines)
 *         should use fluxus_last_error_copy() in the same C call as the failing function.
 * Thread safety: any thread; each thread sees its own message.
 */
FLUXUS_API const char *fluxus_last_error_message(void);

/**
 * Copy the calling thread's last-error message (the string fluxus_last_error_message() returns)
 * into a buffer the caller owns. Bindings use it to take the message out of thread-local storage
 * in the same C call as the failing function (a cgo preamble wrapper, a JNI or FFM shim), or to
 * keep it past the next fluxus call. The message itself is never changed, not even when this
 * call fails, so a caller can retry with a larger buffer.
 *
 * @param[out] buf      Receives the message as NUL-terminated UTF-8; the caller owns it. When
 *                      the message does not fit, buf receives its longest prefix that fits and
 *                      ends on a character boundary, NUL-terminated. May be NULL only when cap
 *                      is 0.
 * @param cap           Size of buf in bytes, NUL included. FLUXUS_ERROR_MESSAGE_MAX always
 *                      suffices.
 * @param[out] out_len  Receives the message's full length in bytes without the NUL (a buffer of
 *                      *out_len + 1 bytes holds it), whatever the return value. May be NULL.
 * @return FLUXUS_OK (the whole message and its NUL are in buf; or buf is NULL and cap is 0, a
 *         length query: only *out_len is set), FLUXUS_ERANGE (cap is too small: buf holds a
 *         truncated prefix, or nothing when cap is 0), FLUXUS_EINVAL (buf is NULL and cap > 0).
 * Thread safety: any thread; copies the calling thread's own message.
 */
FLUXUS_API int32_t fluxus_last_error_copy(char *buf, size_t cap, size_t *out_len);

/* Log levels for fluxus_log_fn. */
#define FLUXUS_LOG_ERROR 1
#define FLUXUS_LOG_WARN 2
#define FLUXUS_LOG_INFO 3
#define FLUXUS_LOG_DEBUG 4

/**
 * Diagnostics callback. `pipeline` and `stage` are names or "" when not applicable; all strings
 * are borrowed for the duration of the call. Called from any fluxus or host thread; must not call
 * back into the runtime that logs.
 */
typedef void (*fluxus_log_fn)(void *user, int32_t level, const char *pipeline, const char *stage,
                              const char *message);

/** Destructor for a `user` pointer handed to fluxus. */
typedef void (*fluxus_user_free_fn)(void *user);

/* ---------------------------------------------------------------------------------------------
 * Callback concurrency: which threads run each callback type, whether it may run at the same
 * time as itself (bindings derive their thread-safety requirements from this: a callback that
 * may run concurrently with itself needs a thread-safe closure, Rust `Fn + Send + Sync`; one
 * that may not, `FnMut + Send`), and which fluxus functions it may call.
 *
 * threads=  worker: a runtime worker thread, or a host thread inside fluxus_runtime_run_once()
 *                   or _run_for() (host-driven mode)
 *           loop:   the runtime's loop thread, or a host thread inside run_once(), run_for() or
 *                   fluxus_runtime_advance_clock()
 *           new:    the thread the callback is about (it runs on that thread)
 *           any:    any of the above, or a host thread inside a fluxus call (a push, a cancel,
 *                   a free)
 * self=     yes: may run concurrently with itself (other items, other workers, other threads)
 *           workers: only when its stage has more than one worker (fluxus_stage_set_workers())
 *           no: calls of one registration never overlap
 * calls=    nonblocking: any fluxus function except those that wait (fluxus_pipeline_wait(),
 *                   _drain(), a push or a limiter acquire with a nonzero timeout) and those that
 *                   would wait for the callback itself (fluxus_runtime_run_once(), _run_for(),
 *                   the _free of any runtime, pipeline or circuit breaker): those return
 *                   FLUXUS_EINCALLBACK
 *           none:   must not call fluxus at all (it may run with fluxus locks held)
 * Every callback may run at the same time as the item destructor on another thread, and none
 * ever runs at the same time as its own registration's user_free (which runs after its last
 * call has returned).
 *
 * @callback fluxus_log_fn            threads=any    self=yes     calls=none
 * @callback fluxus_user_free_fn      threads=any    self=yes     calls=nonblocking
 * @callback fluxus_wakeup_fn         threads=any    self=yes     calls=none
 * @callback fluxus_thread_start_fn   threads=new    self=yes     calls=none
 * @callback fluxus_thread_stop_fn    threads=new    self=yes     calls=none
 * @callback fluxus_timer_fn          threads=loop   self=yes     calls=nonblocking
 * @callback fluxus_item_free_fn      threads=any    self=yes     calls=none
 * @callback fluxus_dead_letter_fn    threads=worker self=yes     calls=nonblocking
 * @callback fluxus_failure_fn        threads=worker self=yes     calls=nonblocking
 * @callback fluxus_pull_fn           threads=worker self=no      calls=nonblocking
 * @callback fluxus_pull_batch_fn     threads=worker self=no      calls=nonblocking
 * @callback fluxus_cursor_read_fn    threads=worker self=no      calls=nonblocking
 * @callback fluxus_cursor_page_fn    threads=any    self=yes     calls=none
 * @callback fluxus_cursor_commit_fn  threads=any    self=no      calls=none
 * @callback fluxus_map_fn            threads=worker self=workers calls=nonblocking
 * @callback fluxus_map_batch_fn      threads=worker self=workers calls=nonblocking
 * @callback fluxus_filter_fn         threads=worker self=workers calls=nonblocking
 * @callback fluxus_filter_batch_fn   threads=worker self=workers calls=nonblocking
 * @callback fluxus_flat_map_fn       threads=worker self=workers calls=nonblocking
 * @callback fluxus_flat_map_batch_fn threads=worker self=workers calls=nonblocking
 * @callback fluxus_sink_fn           threads=worker self=workers calls=nonblocking
 * @callback fluxus_sink_batch_fn     threads=worker self=workers calls=nonblocking
 * @callback fluxus_async_map_fn      threads=worker self=no      calls=nonblocking
 * @callback fluxus_async_cancel_fn   threads=any    self=yes     calls=nonblocking
 * @callback fluxus_reduce_fn         threads=worker self=workers calls=nonblocking
 * @callback fluxus_window_fn         threads=worker self=workers calls=nonblocking
 * @callback fluxus_route_fn          threads=worker self=no      calls=nonblocking
 * @callback fluxus_copy_fn           threads=worker self=workers calls=nonblocking
 * @callback fluxus_join_input_fn     threads=worker self=workers calls=nonblocking
 * @callback fluxus_load_fn           threads=worker self=workers calls=nonblocking
 * @callback fluxus_attach_fn         threads=worker self=workers calls=nonblocking
 * @callback fluxus_retry_fn          threads=worker self=workers calls=nonblocking
 * @callback fluxus_worker_init_fn    threads=worker self=workers calls=nonblocking
 * @callback fluxus_worker_close_fn   threads=worker self=workers calls=nonblocking
 * @callback fluxus_key_fn            threads=any    self=yes     calls=none
 * @callback fluxus_breaker_state_fn  threads=any    self=no      calls=nonblocking
 * ------------------------------------------------------------------------------------------- */

/* ---------------------------------------------------------------------------------------------
 * Runtime: the loop thread and worker threads shared by pipelines
 * ------------------------------------------------------------------------------------------- */

typedef struct fluxus_runtime fluxus_runtime;

/**
 * Create a runtime. It owns no threads until it starts (explicitly, or when its first pipeline
 * starts).
 * @param[out] out  Receives the runtime; the caller owns it and releases it with
 *                  fluxus_runtime_free(). Set to NULL on failure.
 * @return FLUXUS_OK, FLUXUS_EINVAL (out is NULL), FLUXUS_ENOMEM.
 * Thread safety: any thread.
 */
FLUXUS_API int32_t fluxus_runtime_new(fluxus_runtime **out);

/**
 * Set the number of worker threads that run stage callbacks (default: number of online CPUs).
 * 0 selects host-driven mode: fluxus starts no thread at all, and the host runs the work by
 * calling fluxus_runtime_run_once() / fluxus_runtime_run_for() (for example once per frame), or
 * by letting its own threads call fluxus_runtime_run_for() as worker entry points.
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle), FLUXUS_ERANGE (n > 1024),
 *         FLUXUS_ESTATE (runtime already started).
 * Thread safety: any thread, before the runtime starts.
 */
FLUXUS_API int32_t fluxus_runtime_set_workers(fluxus_runtime *rt, uint32_t n);

/**
 * Read the configured number of worker threads.
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle or out is NULL).
 * Thread safety: any thread.
 */
FLUXUS_API int32_t fluxus_runtime_get_workers(uint32_t *out, fluxus_runtime *rt);

/**
 * Set how long an idle worker spins looking for work before it sleeps (default 50 µs). A
 * runtime with no traffic costs no CPU beyond this window.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ERANGE (> 100000 µs), FLUXUS_ESTATE (started).
 * Thread safety: any thread, before the runtime starts.
 */
FLUXUS_API int32_t fluxus_runtime_set_spin_us(fluxus_runtime *rt, uint32_t spin_us);

/**
 * Stall watchdog: when a worker thread has been inside one callback for about `ms`
 * milliseconds (a callback that blocks, or loops), the runtime starts a stand-in worker so the
 * other stages and pipelines keep running, and logs a warning. At most one stand-in per stuck
 * worker, and at most max(workers, 4) in all; stand-ins stay until the runtime is freed. The
 * check runs on the loop thread twice per threshold. 0 turns it off; default 1000 ms. A
 * callback that never returns still holds its own stage (and its worker thread).
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ERANGE (not 0 or 10..3600000), FLUXUS_ESTATE
 *         (started).
 * Thread safety: any thread, before the runtime starts. No effect in host-driven mode.
 */
FLUXUS_API int32_t fluxus_runtime_set_stall_threshold_ms(fluxus_runtime *rt, uint32_t ms);

/**
 * Install the log callback, replacing any previous one (whose user_free runs now, or once a
 * call of it in progress on another thread returns). `fn` NULL removes the callback (`user`
 * is still kept until replaced or the runtime is freed, like any registration). Only messages
 * whose level is <= `max_level` are passed on (the default is FLUXUS_LOG_WARN: errors and
 * warnings); `max_level` 0 passes nothing.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ERANGE (max_level not in 0..FLUXUS_LOG_DEBUG).
 * Thread safety: any thread, any time except from inside the log callback.
 */
FLUXUS_API int32_t fluxus_runtime_set_log(fluxus_runtime *rt, int32_t max_level, fluxus_log_fn fn,
                                          void *user, fluxus_user_free_fn user_free);

/* ----- Host event loops (host-driven mode) ----- */

/**
 * Wake-up callback: work became ready in a host-driven runtime (a task to run, or a timer whose
 * deadline moved earlier), so the host's loop should call fluxus_runtime_run_once() (and ask
 * fluxus_runtime_get_next_timer_us() again). Called at most once between two run_once() or
 * run_for() calls, on whichever thread made the work ready (a host thread pushing, a callback),
 * sometimes with fluxus locks held: it must not block and must not call fluxus; posting to the
 * host's loop (uv_async_send(), an eventfd write, PostMessage) is what it is for.
 */
typedef void (*fluxus_wakeup_fn)(void *user);

/**
 * Set the wake-up callback of a host-driven runtime (0 workers). Setting it again replaces it
 * (the previous user_free runs then); `fn` NULL removes it.
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle), FLUXUS_ESTATE (the runtime has started).
 * Thread safety: any thread, before the runtime starts.
 * @since 0.4
 */
FLUXUS_API int32_t fluxus_runtime_set_wakeup(fluxus_runtime *rt, fluxus_wakeup_fn fn, void *user,
                                             fluxus_user_free_fn user_free);

/**
 * A file descriptor of a host-driven runtime that becomes readable when work is ready (as the
 * wake-up callback would be called), for hosts that poll: epoll, poll(), a libuv uv_poll_t. The
 * host does not read it; fluxus_runtime_run_once() and run_for() reset it. Timers do not make it
 * readable by themselves: poll with fluxus_runtime_get_next_timer_us() as the timeout. The
 * descriptor belongs to the runtime (closed when it is released).
 * @param[out] out  Receives the descriptor.
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle, NULL out), FLUXUS_ESTATE (the runtime has worker
 *         threads), FLUXUS_ENOTSUP (no such descriptor on this platform: Windows; use the
 *         wake-up callback), FLUXUS_ENOMEM (no descriptor available).
 * Thread safety: any thread.
 * @since 0.4
 */
FLUXUS_API int32_t fluxus_runtime_get_fd(int32_t *out, fluxus_runtime *rt);

/**
 * How long a host-driven runtime's host may sleep: microseconds until its earliest timer (rounded
 * up), 0 if work is ready now, UINT64_MAX if nothing is scheduled (sleep until woken).
 * @param[out] out  Receives the time.
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle, NULL out), FLUXUS_ESTATE (the runtime has
 *         worker threads).
 * Thread safety: any thread.
 * @since 0.4
 */
FLUXUS_API int32_t fluxus_runtime_get_next_timer_us(uint64_t *out, fluxus_runtime *rt);

/* The threads a runtime creates (fluxus_thread_start_fn's `kind`). */
#define FLUXUS_THREAD_LOOP 1   /* the loop thread: timers, wake-ups, host timer callbacks */
#define FLUXUS_THREAD_WORKER 2 /* a worker; `index` is its slot (slots past the configured
                                  count are stand-ins the stall watchdog added, and a slot
                                  may get a new thread after a forced unwind ended its old one) */

/**
 * Thread start hook: runs first on every thread the runtime creates, before it runs anything
 * else. `name` is the thread's name ("fluxus-loop", "fluxus-w3"; at most 15 characters, also
 * given to the OS where it names threads). A binding attaches the thread to its VM here (a JVM
 * attachment, a Python thread state); a host sets priorities or affinity.
 */
typedef void (*fluxus_thread_start_fn)(void *user, int32_t kind, uint32_t index,
                                       const char *name);
/** Thread stop hook: runs last on the thread, however it ends (also by a forced unwind). */
typedef void (*fluxus_thread_stop_fn)(void *user, int32_t kind, uint32_t index);

/**
 * Set the hooks that run on every thread the runtime creates: `start` first on the new thread,
 * `stop` last on it. Either may be NULL. A host-driven runtime (0 workers) creates no thread and
 * calls neither. The hooks may run on several threads at once. Setting them again replaces them
 * (the previous user_free runs then); `user_free` runs when the runtime is released.
 * Every thread fluxus creates blocks the host's asynchronous signals (everything but SIGSEGV,
 * SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS and SIGPROF), whether or not hooks are set:
 * a SIGINT or SIGTERM sent to the process reaches a host thread, never a fluxus thread.
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle), FLUXUS_ESTATE (the runtime has started).
 * Thread safety: any thread, before the runtime starts.
 * @since 0.4
 */
FLUXUS_API int32_t fluxus_runtime_set_thread_hooks(fluxus_runtime *rt, fluxus_thread_start_fn start,
                                                   fluxus_thread_stop_fn stop, void *user,
                                                   fluxus_user_free_fn user_free);

/**
 * Start the loop thread and the workers. Starting a pipeline starts its runtime if needed, so
 * calling this is optional.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ESTATE (already started or freed),
 *         FLUXUS_ENOMEM (threads could not be created).
 * Thread safety: any thread.
 */
FLUXUS_API int32_t fluxus_runtime_start(fluxus_runtime *rt);

/**
 * Host-driven mode: run the work that is ready now (stage batches, due timers, wake-ups) on the
 * calling thread, then return without waiting.
 * @param[out] out_ran  If not NULL, receives the number of tasks that ran (0 means idle).
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ESTATE (runtime has its own workers),
 *         FLUXUS_EINCALLBACK.
 * Thread safety: any thread; several host threads may call it at once.
 */
FLUXUS_API int32_t fluxus_runtime_run_once(uint32_t *out_ran, fluxus_runtime *rt);

/**
 * Host-driven mode: run work on the calling thread for up to `timeout_ms`, sleeping when there
 * is nothing to do. Returns early when no pipeline on the runtime is running. Host threads that
 * call this in a loop act as the runtime's worker threads.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ESTATE (runtime has its own workers),
 *         FLUXUS_EINCALLBACK, FLUXUS_ECANCELED (another thread freed the runtime meanwhile).
 * Thread safety: any thread; several host threads may call it at once.
 */
FLUXUS_API int32_t fluxus_runtime_run_for(fluxus_runtime *rt, uint32_t timeout_ms);

/**
 * Free a runtime: cancel and finish every pipeline still running on it, stop and join its
 * threads, and release it. Pipelines created on it stay valid handles and must still be freed:
 * their stats can be read, fluxus_pipeline_wait() returns FLUXUS_ECANCELED, starting one returns
 * FLUXUS_ESTATE. NULL is accepted and ignored.
 * Calls on the runtime that other threads are making meanwhile end first (see "Handles and
 * frees" at the top).
 * @return FLUXUS_OK, FLUXUS_EINVAL (not a live runtime), FLUXUS_EINCALLBACK (called from inside
 *         a fluxus callback or another fluxus call; nothing was freed).
 * Thread safety: any thread except the runtime's own; the handle is invalid afterwards.
 */
FLUXUS_API int32_t fluxus_runtime_free(fluxus_runtime *rt);

/* ----- Clock and timers ----- */

/**
 * Give the runtime a virtual clock that stands still until fluxus_runtime_advance_clock() moves
 * it. Every deadline fluxus keeps (timers, stage timeouts, rate limits, debounce and throttle
 * periods, poll intervals, overflow timeouts) then follows it, so tests can assert timing
 * exactly. Timeouts given to blocking calls (push, wait, drain) stay in real time.
 * @param enabled   1 for the virtual clock, 0 for the real (monotonic) one, the default.
 * @param start_ns  The virtual clock's starting reading.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ERANGE (enabled not 0/1), FLUXUS_ESTATE (started).
 * Thread safety: any thread, before the runtime starts.
 */
FLUXUS_API int32_t fluxus_runtime_set_virtual_clock(fluxus_runtime *rt, int32_t enabled,
                                                    uint64_t start_ns);

/**
 * Move the virtual clock forward by `delta_ns` (it saturates at UINT64_MAX). Due timers fire on
 * the calling thread, in deadline order, each seeing the clock at its own deadline, including
 * timers they schedule within the advanced span (so a timer that keeps re-arming itself with no
 * delay would keep the advance going forever; fluxus_runtime_run_once() and _run_for() fire
 * only what was due when they looked). Tasks they wake run on the workers (or, in host-driven
 * mode, on the next fluxus_runtime_run_once()). May be called from a timer callback.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ESTATE (the runtime uses the real clock).
 * Thread safety: any thread; advances are serialised.
 */
FLUXUS_API int32_t fluxus_runtime_advance_clock(fluxus_runtime *rt, uint64_t delta_ns);

/**
 * Read the runtime's clock in nanoseconds (the virtual reading, or CLOCK_MONOTONIC).
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle, out NULL).
 * Thread safety: any thread.
 */
FLUXUS_API int32_t fluxus_runtime_now_ns(fluxus_runtime *rt, uint64_t *out);

/** Timer callback; see fluxus_runtime_call_after(). */
typedef void (*fluxus_timer_fn)(void *user);

/**
 * Call `fn(user)` once, `delay_ns` from now on the runtime's clock. Timers live in the
 * runtime's timer heap, woken with sub-millisecond precision on Linux (a timerfd on the loop;
 * elsewhere libuv's millisecond timers). Thousands may be pending at once; they cost no thread.
 * The callback runs on the loop thread (threaded mode), on a thread driving the runtime
 * (host-driven mode), or on the thread advancing a virtual clock; it must return quickly, may
 * call non-blocking fluxus functions (complete an async item, try-push, add or cancel timers)
 * and may not block (blocking calls return FLUXUS_EINCALLBACK). `user_free`, if set, runs once
 * after the callback, or when the timer is cancelled, or when the runtime is freed with the
 * timer still pending (then `fn` is not called).
 * @param[out] out_id  Receives the timer's id (never 0) for fluxus_runtime_cancel_timer(); may
 *                     be NULL.
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle, NULL fn), FLUXUS_ENOMEM.
 * Thread safety: any thread, also from inside callbacks.
 */
FLUXUS_API int32_t fluxus_runtime_call_after(uint64_t *out_id, fluxus_runtime *rt,
                                             uint64_t delay_ns, fluxus_timer_fn fn, void *user,
                                             fluxus_user_free_fn user_free);

/**
 * Cancel a pending timer: its callback will not run, and its user_free runs now.
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle), FLUXUS_ENOTFOUND (no such pending timer: it
 *         has already run, is running, or was cancelled).
 * Thread safety: any thread, also from inside callbacks.
 */
FLUXUS_API int32_t fluxus_runtime_cancel_timer(fluxus_runtime *rt, uint64_t id);

/* ---------------------------------------------------------------------------------------------
 * Pipeline: construction
 * ------------------------------------------------------------------------------------------- */

typedef struct fluxus_pipeline fluxus_pipeline;

/**
 * Create an empty pipeline on a runtime.
 * @param[out] out  Receives the pipeline; released with fluxus_pipeline_free().
 * @param rt        The runtime. Its memory stays allocated while the pipeline exists, even if
 *                  the runtime handle is freed first (see fluxus_runtime_free()).
 * @param name      Name for stats and logs, or NULL ("pipeline"). Copied.
 * @return FLUXUS_OK, FLUXUS_EINVAL (out NULL, or rt NULL or already freed), FLUXUS_ENOMEM.
 * Thread safety: any thread.
 */
FLUXUS_API int32_t fluxus_pipeline_new(fluxus_pipeline **out, fluxus_runtime *rt,
                                       const char *name);

/** Item destructor: releases an item that will not reach a sink. */
typedef void (*fluxus_item_free_fn)(void *user, uint64_t item);

/**
 * Set the item destructor, called exactly once for every admitted item that does not reach the
 * sink (filtered, deduplicated away, failed, dead-lettered after its callback, dropped,
 * cancelled). Runs on whichever thread ended the item. Not called for items whose ownership
 * went elsewhere: flat-map inputs kept with fluxus_emitter_keep_input(), async items that timed
 * out or were cancelled while the host held them (the host keeps them; see
 * fluxus_pipeline_complete_async()), and items an error route handed to another pipeline.
 * Setting it again replaces it (the previous user_free runs then); `fn` NULL removes it.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ESTATE (after start).
 * Thread safety: any thread, before start.
 */
FLUXUS_API int32_t fluxus_pipeline_set_item_free(fluxus_pipeline *p, fluxus_item_free_fn fn,
                                                 void *user, fluxus_user_free_fn user_free);

/**
 * The details of one failure: where it happened, its status, its message and how many attempts
 * it had. A dead-letter or route-observer callback borrows one for the duration of the call; the
 * one from fluxus_pipeline_get_failure() stays valid until the pipeline is freed. Read it only
 * through the fluxus_failure_* accessors; its strings have the lifetime of the failure itself.
 */
typedef struct fluxus_failure fluxus_failure;

/*
 * Accessors of a fluxus_failure: each writes one field to `*out`. Any thread may call them
 * while the failure is valid; they do not clear the last error message.
 */

/** Stage index meaning "the pipeline's own source" (a stage added with
 * fluxus_pipeline_add_source() has an index of its own). */
#define FLUXUS_STAGE_SOURCE UINT32_MAX

/**
 * Name of the stage where the item failed, or of the source (borrowed, as the failure).
 * @return FLUXUS_OK, FLUXUS_EINVAL (`out` or `f` is NULL).
 */
FLUXUS_API int32_t fluxus_failure_get_stage_name(const char **out, const fluxus_failure *f);
/**
 * Index of that stage (0-based, in order of addition), or FLUXUS_STAGE_SOURCE.
 * @return FLUXUS_OK, FLUXUS_EINVAL (`out` or `f` is NULL).
 */
FLUXUS_API int32_t fluxus_failure_get_stage_index(uint32_t *out, const fluxus_failure *f);
/**
 * The failure status: the callback's nonzero return, or a FLUXUS_E* code.
 * @return FLUXUS_OK, FLUXUS_EINVAL (`out` or `f` is NULL).
 */
FLUXUS_API int32_t fluxus_failure_get_status(int32_t *out, const fluxus_failure *f);
/**
 * What went wrong, for people: the text the failing callback attached (fluxus_call_set_error(),
 * fluxus_call_set_item_error(), fluxus_pipeline_fail_async()), or else fluxus's own description,
 * as fluxus_failure_get_description() gives it. Borrowed, as the failure; never NULL.
 * @return FLUXUS_OK, FLUXUS_EINVAL (`out` or `f` is NULL).
 */
FLUXUS_API int32_t fluxus_failure_get_message(const char **out, const fluxus_failure *f);
/**
 * How many times the item was attempted at that stage: 1 for a first failure; with
 * fluxus_stage_set_retry(), every call made (plus a last attempt a circuit breaker refused).
 * @return FLUXUS_OK, FLUXUS_EINVAL (`out` or `f` is NULL).
 */
FLUXUS_API int32_t fluxus_failure_get_attempts(uint32_t *out, const fluxus_failure *f);
/**
 * fluxus's own description of the failure, whatever text the callback attached: "map callback
 * failed", "map callback threw", "async completion reported an error", "circuit breaker open",
 * "the pull source returned an error", ... (borrowed, as the failure; never NULL). The wording
 * may change between versions; the status is the stable part.
 * @return FLUXUS_OK, FLUXUS_EINVAL (`out` or `f` is NULL).
 */
FLUXUS_API int32_t fluxus_failure_get_description(const char **out, const fluxus_failure *f);
/**
 * 1 when the item failed because its retries were used up: the stage retries failures
 * (fluxus_stage_set_retry() with more than one attempt) and this was the last attempt allowed.
 * 0 otherwise: a first failure at a stage that does not retry, a failure the retry predicate
 * declined, a failure that is never retried (circuit-breaker refusal, overflow, async timeout),
 * the failure of a source or of a worker init hook.
 * @return FLUXUS_OK, FLUXUS_EINVAL (`out` or `f` is NULL).
 */
FLUXUS_API int32_t fluxus_failure_get_retries_exhausted(int32_t *out, const fluxus_failure *f);

/**
 * Dead-letter callback: receives every item whose stage uses FLUXUS_ERROR_DEAD_LETTER and fails,
 * with the failure (borrowed for the call; its message is the callback's text when the failing
 * callback attached one). It borrows the item; the item destructor runs after it returns.
 * Called on a worker thread; fluxus_call_set_error() is refused inside it (FLUXUS_ESTATE).
 */
typedef void (*fluxus_dead_letter_fn)(void *user, uint64_t item, const fluxus_failure *failure);

/**
 * Set the dead-letter callback (required if any stage uses FLUXUS_ERROR_DEAD_LETTER). Setting
 * it again replaces it (the previous user_free runs then).
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle, NULL fn), FLUXUS_ESTATE (after start).
 * Thread safety: any thread, before start.
 */
FLUXUS_API int32_t fluxus_pipeline_set_dead_letter(fluxus_pipeline *p, fluxus_dead_letter_fn fn,
                                                   void *user, fluxus_user_free_fn user_free);

/**
 * Failure callback: sees `item` and the failure that sent it somewhere; see
 * fluxus_pipeline_set_route_observer().
 */
typedef void (*fluxus_failure_fn)(void *user, uint64_t item, const fluxus_failure *failure);

/**
 * Set the route observer: it is called for every item that fails at a stage with an error
 * branch (FLUXUS_OUTLET_ERROR) or an error route (fluxus_stage_set_error_route()), after the
 * item's retries, just before the item leaves for the branch or the route's pipeline. Items
 * carry nothing but their 64-bit word, so this is where the host learns why an item is being
 * routed: stage, status, the callback's own text (fluxus_failure_get_message()), attempts and
 * whether retries were exhausted; a host whose items are pointers may copy what it needs into
 * the item. The item is borrowed for the call (it may be modified, not freed or replaced).
 * Called on the worker thread running the failing stage, with no fluxus lock held; it must not
 * block, and fluxus_call_set_error() is refused inside it (FLUXUS_ESTATE). A routed item that
 * later cannot be handed over (the route's pipeline closed or went away) fails at the stage,
 * as fluxus_stage_set_error_route() says; the observer has seen it already.
 * @param fn         The callback, or NULL to remove it.
 * @param user       Passed to `fn`; `user_free` (may be NULL) releases it once, when it is
 *                   replaced or the pipeline is freed.
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle), FLUXUS_ESTATE (after start).
 * Thread safety: any thread, before start.
 */
FLUXUS_API int32_t fluxus_pipeline_set_route_observer(fluxus_pipeline *p, fluxus_failure_fn fn,
                                                      void *user,
                                                      fluxus_user_free_fn user_free);

/**
 * Let the engine fuse consecutive single-worker stages into one task with no queue between them
 * (default 1). 0 puts every stage on its own task with a real queue in front of it.
 * Fused stages run on one thread; each stage still sees its items in input order, but the
 * interleaving of callbacks *of different stages* is not promised: a fused run of plain maps,
 * filters and a sink usually takes each item through all of them before the next item, and
 * sometimes (one batch in 64, the one whose callback time is measured) runs a whole batch
 * through one stage before the next. Do not rely on either.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ERANGE (not 0/1), FLUXUS_ESTATE (after start).
 */
FLUXUS_API int32_t fluxus_pipeline_set_fusion(fluxus_pipeline *p, int32_t enabled);

/**
 * Maximum number of items moved per batch between stages (default 256, range 1..65536).
 * Bigger batches cost fewer synchronisations; smaller ones cut latency. A pipeline fused into
 * one run of per-item stages from a pull source to its sink moves nothing between stages: one
 * pass of its worker then reads, item by item, as many batches as its source and callbacks get
 * through in about 50 us (by the last sampled batch; at least 1, at most 16; not with a rate
 * limit, auto-pause or breaker on the source), and its counters are updated once per pass.
 * Pause, cancel and drain requests from other threads are still seen between items.
 * Neither parallelism nor cancel granularity depends on the batch size: N workers of a stage
 * run N items at once even when all of them came in one batch (fluxus_stage_set_workers()),
 * and cancel, fail-fast, drain and pause take effect between items, not at the end of a batch.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ERANGE, FLUXUS_ESTATE (after start).
 */
FLUXUS_API int32_t fluxus_pipeline_set_batch_size(fluxus_pipeline *p, uint32_t n);

/* ----- Sources ----- */

/* Return values of a pull source. Any other value is the source's error. */
#define FLUXUS_PULL_ITEM 0  /* an item (or `count` items) was produced */
#define FLUXUS_PULL_END 1   /* the source is exhausted (batch form: `count` items still valid) */
#define FLUXUS_PULL_LATER 2 /* nothing now: ask again after the poll interval */

/**
 * Pull source: called on a worker thread when there is room downstream. Store an item in *item
 * and return FLUXUS_PULL_ITEM (ownership of the item passes to fluxus), or return
 * FLUXUS_PULL_END / FLUXUS_PULL_LATER / an error. Never called concurrently with itself.
 */
typedef int32_t (*fluxus_pull_fn)(void *user, uint64_t *item);

/**
 * Batch pull source: fill up to `capacity` items and set *count. FLUXUS_PULL_ITEM with
 * *count == 0 is treated as FLUXUS_PULL_LATER.
 */
typedef int32_t (*fluxus_pull_batch_fn)(void *user, uint64_t *items, uint32_t capacity,
                                        uint32_t *count);

/**
 * Make the pipeline's source a pull source. A source error stops the pipeline with
 * FLUXUS_ESOURCE (the rest is cancelled).
 * @return FLUXUS_OK, FLUXUS_EINVAL (NULL fn), FLUXUS_ESTATE (source already set, or started).
 * Thread safety: any thread, before start.
 */
FLUXUS_API int32_t fluxus_pipeline_set_pull_source(fluxus_pipeline *p, const char *name,
                                                   fluxus_pull_fn fn, void *user,
                                                   fluxus_user_free_fn user_free);
/** Batch form of fluxus_pipeline_set_pull_source(). */
FLUXUS_API int32_t fluxus_pipeline_set_pull_source_batch(fluxus_pipeline *p, const char *name,
                                                         fluxus_pull_batch_fn fn, void *user,
                                                         fluxus_user_free_fn user_free);

#ifdef FLUXUS_EXPERIMENTAL /* experimental tier: see "Stability" at the top */
/**
 * Cursor source read: read the page that starts at `cursor` (a page number, a file offset, an
 * API's continuation token id...), fill up to `capacity` items, set *count and set
 * *next_cursor to where the next read starts. Return FLUXUS_PULL_ITEM (a page was read; it may
 * be empty), FLUXUS_PULL_END (this was the last page; its `count` items still count),
 * FLUXUS_PULL_LATER (nothing now; the same cursor is read again after the poll interval) or an
 * error (the pipeline stops with FLUXUS_ESOURCE). Every read must use a cursor value no other
 * read of this run used.
 */
typedef int32_t (*fluxus_cursor_read_fn)(void *user, uint64_t cursor, uint64_t *items,
                                         uint32_t capacity, uint32_t *count,
                                         uint64_t *next_cursor);
/**
 * The page an item came from: the cursor its read was called with. Items a map returns and
 * items a flat map emits must answer with the page of the item they came from (hosts usually
 * keep it in the item); so must broadcast and router copies, and a loader's attach outputs.
 * An item a window or join callback emits from several items must answer with the oldest of
 * their pages. Called on any fluxus thread, often; must be cheap and not block. A reduce stage
 * cannot follow a cursor source (start refuses it: its inputs end long before the
 * accumulators carrying them).
 */
typedef uint64_t (*fluxus_cursor_page_fn)(void *user, uint64_t item);
/**
 * Commit: every item of every page read before `cursor` is finished (delivered, filtered,
 * dead-lettered, or failed under FLUXUS_ERROR_SKIP). Store it; after a crash or restart, start
 * the source again from it. Called in order, one call at a time, on a fluxus thread.
 */
typedef void (*fluxus_cursor_commit_fn)(void *user, uint64_t cursor);

/**
 * Make the pipeline's source a resumable cursor source. fluxus reads pages from
 * `start_cursor` on (the batch size caps a page; a source rate limiter caps it further), counts
 * for each page the items that are not finished yet (wherever they are: queues, parallel
 * unordered stages, retries, async calls, flat-map children), and calls `commit` with the low
 * watermark: the cursor after the newest page that is finished together with every page
 * before it. Restarting from the last committed cursor processes no item before it twice and
 * loses none. An item that ends unfinished (cancelled, dropped by an overflow policy, failed
 * under fail-fast) holds the watermark at its page for good, so that page is read again after
 * a restart (items after the watermark may be processed again: at-least-once).
 * @param read, page_of  Required. `commit` may be NULL (poll
 *                       fluxus_pipeline_get_committed_cursor() instead).
 * @param user           Passed to all three; `user_free` runs once when the pipeline is freed.
 * @return FLUXUS_OK, FLUXUS_EINVAL (NULL read or page_of), FLUXUS_ESTATE (source already set,
 *         or started).
 * Thread safety: any thread, before start.
 */
FLUXUS_API int32_t fluxus_pipeline_set_cursor_source(fluxus_pipeline *p, const char *name,
                                                     uint64_t start_cursor,
                                                     fluxus_cursor_read_fn read,
                                                     fluxus_cursor_page_fn page_of,
                                                     fluxus_cursor_commit_fn commit, void *user,
                                                     fluxus_user_free_fn user_free);

/**
 * The cursor last committed by a cursor source (see fluxus_pipeline_set_cursor_source()).
 * @return FLUXUS_OK, FLUXUS_ENOTFOUND (nothing committed yet), FLUXUS_EINVAL (bad handle, NULL
 *         out, or not a cursor source).
 * Thread safety: any thread.
 */
FLUXUS_API int32_t fluxus_pipeline_get_committed_cursor(uint64_t *out, fluxus_pipeline *p);
#endif /* FLUXUS_EXPERIMENTAL */

/**
 * How long to wait before calling a pull source again after FLUXUS_PULL_LATER
 * (default 1000 µs, range 1..60000000).
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ERANGE, FLUXUS_ESTATE (after start).
 */
FLUXUS_API int32_t fluxus_pipeline_set_poll_interval_us(fluxus_pipeline *p, uint32_t us);

/**
 * Make the pipeline's source a push source fed by fluxus_pipeline_push() and friends from any
 * host thread.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ESTATE (source already set, or started).
 */
FLUXUS_API int32_t fluxus_pipeline_set_push_source(fluxus_pipeline *p, const char *name);

/**
 * Push one item, waiting up to `timeout_ms` for room (0 = do not wait; UINT32_MAX = forever).
 * On FLUXUS_OK the pipeline owns the item; on any error the caller still owns it.
 * The first stage's overflow policy applies: with a drop or fail policy a full queue admits the
 * item and then ends it as the policy says (FLUXUS_OK is returned); the item destructor, the
 * dead-letter callback and the key function may then run on the pushing thread, and count as
 * fluxus callbacks there (no blocking call and no freeing of this pipeline inside them).
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ESTATE (not started, or not a push source),
 *         FLUXUS_ETIMEDOUT (still full after timeout_ms), FLUXUS_ECLOSED (input closed),
 *         FLUXUS_ECANCELED (pipeline cancelled or finished), FLUXUS_EINCALLBACK (a blocking
 *         push from inside one of this runtime's callbacks could deadlock; use try-push).
 * Thread safety: any thread, several at once.
 */
FLUXUS_API int32_t fluxus_pipeline_push(fluxus_pipeline *p, uint64_t item, uint32_t timeout_ms);

/**
 * Push one item without waiting.
 * @return as fluxus_pipeline_push(), but FLUXUS_EFULL instead of waiting when there is no room
 *         (the caller still owns the item). Allowed from inside callbacks.
 */
FLUXUS_API int32_t fluxus_pipeline_try_push(fluxus_pipeline *p, uint64_t item);

/**
 * Push up to `count` items in order, waiting up to `timeout_ms` in total.
 * @param[out] out_pushed  Receives how many items (a prefix of `items`) the pipeline now owns; may be
 *                     NULL. `items` may be NULL only when `count` is 0.
 * @return as fluxus_pipeline_push(); FLUXUS_OK only if all were pushed.
 */
FLUXUS_API int32_t fluxus_pipeline_push_many(uint32_t *out_pushed, fluxus_pipeline *p,
                                             const uint64_t *items, uint32_t count,
                                             uint32_t timeout_ms);

/**
 * Close the input of a push source: items already pushed are processed, and the pipeline
 * finishes when they are done. Closing twice is allowed.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ESTATE (not a push source, or not started).
 */
FLUXUS_API int32_t fluxus_pipeline_close_input(fluxus_pipeline *p);

/**
 * Pause the source: a pull source is not called, pushes wait (try-push says FLUXUS_EFULL).
 * Items already admitted keep flowing. Pausing a paused source is allowed. Called from one of
 * this pipeline's callbacks (as are cancel and a failure), the pull source is not called again
 * once the callback returns; called from another thread, a worker reading a pull source item
 * by item stops between items (the call it had already started still runs). A batch or cursor
 * source's call in progress may still return up to a batch of items.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ESTATE (no source).
 */
FLUXUS_API int32_t fluxus_pipeline_pause(fluxus_pipeline *p);

/** Resume a paused source. @return as fluxus_pipeline_pause(). */
FLUXUS_API int32_t fluxus_pipeline_resume(fluxus_pipeline *p);

/* ----- Stages ----- */

/*
 * What a stage callback returns. 0 is success. Any other value fails the item at that stage: it
 * may be retried (fluxus_stage_set_retry()), sent down an error route, and then ends as the
 * stage's error policy says (FLUXUS_ERROR_*). One value is different: FLUXUS_ECANCELED means
 * "I gave up on this item because of a cancel" (typically a long callback that saw
 * fluxus_pipeline_get_cancelled() become 1). The item then ends as *cancelled*, from any
 * callback (map, filter, flat map, sink, their batch forms per item, an async completion,
 * reduce, window, join, loader): it is not failed, not retried, not dead-lettered, not sent
 * down an error route, not counted by a circuit breaker or an auto-pause, and it does not stop
 * a fail-fast pipeline. That is what a cancel-aware callback should return.
 *
 * Stopping: once a pipeline is cancelled (fluxus_pipeline_cancel(), a drain deadline) or
 * stopped by a fail-fast failure, no callback of any stage starts for any other item. Each
 * worker checks between items, so what still runs is at most the one callback per worker that
 * had already started (those items end as their callback says: one that fails counts as
 * failed). Every other admitted item that was not delivered ends as cancelled, wherever it was:
 * in a queue, in a batch, between two fused stages. In particular no sink call starts once
 * fluxus_pipeline_cancel() has returned: a sink call already running then may complete, and
 * its item counts as delivered; an item that finishes any other stage after the cancel is
 * cancelled. How soon a cancel takes effect does not depend on the batch size.
 */

/**
 * Map: transform one item. *out arrives preset to `in`, so a map that returns 0 without
 * writing it passes its input on (in every path: fused or not, any worker count, with or
 * without a cache). On 0 the callback owns `in` and *out is the item that goes on (it may
 * equal `in`); on nonzero the item fails with that status and fluxus still owns it.
 */
typedef int32_t (*fluxus_map_fn)(void *user, uint64_t in, uint64_t *out);
/**
 * Batch map: out[i] from in[i] for i < count. out[] arrives preset to in[] (an out[i] left
 * unwritten passes in[i] on) and status[] zeroed; set status[i] nonzero to fail item i. A
 * nonzero return fails every item of the batch with that status.
 */
typedef int32_t (*fluxus_map_batch_fn)(void *user, const uint64_t *in, uint64_t *out,
                                       int32_t *status, uint32_t count);
/**
 * Filter: set *keep to 1 to pass the item on, 0 to drop it (filtered); *keep arrives 0. Nonzero
 * return fails.
 */
typedef int32_t (*fluxus_filter_fn)(void *user, uint64_t item, int32_t *keep);
/** Batch filter: keep[] and status[] arrive zeroed. */
typedef int32_t (*fluxus_filter_batch_fn)(void *user, const uint64_t *items, int32_t *keep,
                                          int32_t *status, uint32_t count);

/** Handle for emitting items from a flat-map callback; valid only during that call. */
typedef struct fluxus_emitter fluxus_emitter;

/**
 * Flat map: emit zero or more items for one input with fluxus_emitter_emit(). Every emitted item is newly
 * admitted to the pipeline and owned by it. The input is consumed: it is counted as filtered at
 * this stage and destroyed with the item destructor after the call, unless the callback calls
 * fluxus_emitter_keep_input() (for example because it emitted the input itself). A nonzero
 * return fails the input; items emitted before the failure still go on.
 */
typedef int32_t (*fluxus_flat_map_fn)(void *user, uint64_t item, fluxus_emitter *em);
/** Batch flat map: the same for `count` inputs. */
typedef int32_t (*fluxus_flat_map_batch_fn)(void *user, const uint64_t *items, uint32_t count,
                                            fluxus_emitter *em);

/**
 * Emit one item from a flat-map callback. Emitting is unbounded within one call (the output
 * buffer grows), so emit in reasonable amounts per input.
 * @return FLUXUS_OK, FLUXUS_EINVAL (not a live emitter), FLUXUS_ENOMEM.
 * Thread safety: only on the thread running the flat-map callback, during the call.
 */
FLUXUS_API int32_t fluxus_emitter_emit(fluxus_emitter *em, uint64_t item);

/**
 * Tell fluxus that the flat-map callback took ownership of its input(s): they are not destroyed
 * after the call (still counted as filtered at this stage).
 * @return FLUXUS_OK, FLUXUS_EINVAL.
 */
FLUXUS_API int32_t fluxus_emitter_keep_input(fluxus_emitter *em);

/** Sink: consume one item. On 0 the callback owns it (delivered); nonzero fails it. */
typedef int32_t (*fluxus_sink_fn)(void *user, uint64_t item);
/** Batch sink: status[] arrives zeroed; set status[i] nonzero to fail item i. */
typedef int32_t (*fluxus_sink_batch_fn)(void *user, const uint64_t *items, int32_t *status,
                                        uint32_t count);

/*
 * Adding stages. Each `add` appends a stage after the previous one (the source comes first, the
 * sink last; a sink must be the final stage and there must be exactly one). `out_stage` receives
 * the stage's index (0-based) for the fluxus_stage_* calls; it may be NULL. A stage is named by
 * its pipeline and this index for the pipeline's life. `name` may be NULL (a name like "map#1"
 * is made); it may not contain '/', which is reserved for the stages of nested pipelines
 * ("outer/inner"; FLUXUS_EINVAL). Callbacks run on worker threads (or on the host thread in
 * host-driven mode); a stage with one worker never runs concurrently with itself.
 *
 * All return FLUXUS_OK, FLUXUS_EINVAL (bad handle, NULL fn), FLUXUS_ESTATE (after start, or a
 * stage after the sink), FLUXUS_ERANGE (more than 4096 stages), FLUXUS_ENOMEM.
 * Thread safety: any thread, before start; not concurrently with another call on the same
 * pipeline.
 */
FLUXUS_API int32_t fluxus_pipeline_add_map(uint32_t *out_stage, fluxus_pipeline *p,
                                           const char *name, fluxus_map_fn fn, void *user,
                                           fluxus_user_free_fn user_free);
FLUXUS_API int32_t fluxus_pipeline_add_map_batch(uint32_t *out_stage, fluxus_pipeline *p,
                                                 const char *name, fluxus_map_batch_fn fn,
                                                 void *user, fluxus_user_free_fn user_free);
FLUXUS_API int32_t fluxus_pipeline_add_filter(uint32_t *out_stage, fluxus_pipeline *p,
                                              const char *name, fluxus_filter_fn fn, void *user,
                                              fluxus_user_free_fn user_free);
FLUXUS_API int32_t fluxus_pipeline_add_filter_batch(uint32_t *out_stage, fluxus_pipeline *p,
                                                    const char *name, fluxus_filter_batch_fn fn,
                                                    void *user, fluxus_user_free_fn user_free);
FLUXUS_API int32_t fluxus_pipeline_add_flat_map(uint32_t *out_stage, fluxus_pipeline *p,
                                                const char *name, fluxus_flat_map_fn fn,
                                                void *user, fluxus_user_free_fn user_free);
FLUXUS_API int32_t fluxus_pipeline_add_flat_map_batch(uint32_t *out_stage, fluxus_pipeline *p,
                                                      const char *name,
                                                      fluxus_flat_map_batch_fn fn, void *user,
                                                      fluxus_user_free_fn user_free);
FLUXUS_API int32_t fluxus_pipeline_add_sink(uint32_t *out_stage, fluxus_pipeline *p,
                                            const char *name, fluxus_sink_fn fn, void *user,
                                            fluxus_user_free_fn user_free);
FLUXUS_API int32_t fluxus_pipeline_add_sink_batch(uint32_t *out_stage, fluxus_pipeline *p,
                                                  const char *name, fluxus_sink_batch_fn fn,
                                                  void *user, fluxus_user_free_fn user_free);

/**
 * Dedup: pass an item only the first time its key is seen; repeats are filtered (destroyed and
 * counted as filtered). The key is the item word itself unless a key function is set with
 * fluxus_stage_set_key_fn(). Word keys are stored exactly; byte keys are stored as their 128-bit
 * XXH3 digest (two different keys collide with probability about 2^-128).
 * By default the key set is exact and grows without limit; see fluxus_stage_set_dedup_max_keys().
 * With more than one worker, keys are sharded across the workers by hash (one set per worker),
 * which is exact as well.
 */
FLUXUS_API int32_t fluxus_pipeline_add_dedup(uint32_t *out_stage, fluxus_pipeline *p,
                                             const char *name);

/* ----- Asynchronous stages ----- */

/**
 * Async map: start the work for `item` and return at once; finish it later, from any thread,
 * with fluxus_pipeline_complete_async(pipeline, completion, status, out). Thousands of items can be in
 * flight without a thread each (see fluxus_stage_set_in_flight()); the callback itself runs on
 * a worker thread and must not block.
 *
 * Ownership: when the callback returns 0 the host owns `item` until it completes it. A nonzero
 * return means the item was not started: fluxus still owns it and fails it with that status
 * (the completion handle is then void), unless the host already completed it inside the call,
 * in which case the completion stands. The handle may be completed inside the callback (a cache
 * hit, say). `completion` is an opaque 64-bit handle, unique to this item's attempt.
 */
typedef int32_t (*fluxus_async_map_fn)(void *user, uint64_t item, uint64_t completion);

/**
 * Add an async map stage (see fluxus_async_map_fn). It runs on one task, whatever its worker
 * count (more than 1 worker is refused at start: raise the in-flight limit instead). Stages
 * after it may be fused into its task. Ordered (the default) emits in input order and keeps
 * completed items in their slot until everything started before them has gone on, so the
 * reorder window counts toward the in-flight limit; FLUXUS_ORDER_UNORDERED emits in completion
 * order; per-key order is refused at start.
 * @return as the other fluxus_pipeline_add_* functions.
 */
FLUXUS_API int32_t fluxus_pipeline_add_async_map(uint32_t *out_stage, fluxus_pipeline *p,
                                                 const char *name, fluxus_async_map_fn fn,
                                                 void *user, fluxus_user_free_fn user_free);

/**
 * Async cancel hook: fluxus gave up on the started item `item` (completion token `completion`)
 * because it timed out (`why` FLUXUS_ETIMEDOUT) or its pipeline was cancelled, or passed a drain
 * deadline (FLUXUS_ECANCELED). The host may abandon the operation (abort the request, close the
 * connection) instead of finishing work whose result fluxus will refuse; it still owns the item
 * and must still release it (its completion returns the same status and hands nothing over).
 * Called at most once per started item, never after that item's completion was accepted, on the
 * thread running the stage (or the one cancelling); it must not block. It may call
 * fluxus_pipeline_complete_async() for the item (which is then refused).
 */
typedef void (*fluxus_async_cancel_fn)(void *user, uint64_t item, uint64_t completion,
                                       int32_t why);

/**
 * Set the cancel hook of an async stage (see fluxus_async_cancel_fn). Setting it again replaces
 * it (the previous user_free runs then); `fn` NULL removes it.
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle, not an async stage), FLUXUS_ENOTFOUND,
 *         FLUXUS_ESTATE (after start).
 * Thread safety: any thread, before start.
 * @since 0.4
 */
FLUXUS_API int32_t fluxus_stage_set_async_cancel(fluxus_pipeline *p, uint32_t stage,
                                                 fluxus_async_cancel_fn fn, void *user,
                                                 fluxus_user_free_fn user_free);

/**
 * Complete an async item. With `status` 0, `item` goes on to the next stage and fluxus owns it
 * (it may be the started item or a new one). With a nonzero status the item fails with that
 * status at the async stage and follows its error policy; fluxus owns `item` then too (the
 * dead-letter callback sees it, the item destructor releases it).
 * On any error return fluxus took nothing: the caller still owns `item`.
 * Timeouts are decided when the stage's worker handles them, one item at a time: a completion
 * that arrives after the deadline but before that is accepted (the item goes on). While the
 * worker fails a timed-out item (its dead-letter callback may run), a completion of it from
 * another thread waits until fluxus is done with the item and is then refused with
 * FLUXUS_ETIMEDOUT; after that refusal fluxus never touches the item again.
 * @return FLUXUS_OK; FLUXUS_ETIMEDOUT (the item had already timed out: the late completion is
 *         ignored and counted in the stage's `late` stat, even after its slot was reused, up to
 *         the last 4096 or 4 x in-flight timeouts); FLUXUS_ECANCELED (the pipeline was
 *         cancelled while the item was in flight); FLUXUS_ESTATE (already completed, also when
 *         a cancel destroyed the completed item since; the callback had refused the item; or
 *         the pipeline has not started); FLUXUS_EINVAL (bad pipeline handle, or a value that is
 *         not a completion handle of this pipeline: never issued, or another pipeline's, which
 *         is recognised except with probability about 2^-32). A handle is checked by
 *         generation, so a stale one is refused and never touches a later item.
 * Thread safety: any thread, including fluxus callbacks and timer callbacks; never blocks.
 */
FLUXUS_API int32_t fluxus_pipeline_complete_async(fluxus_pipeline *p, uint64_t completion, int32_t status,
                                         uint64_t item);

/**
 * Complete an async item with a failure that carries a text ("HTTP 503 from api.example"): as
 * fluxus_pipeline_complete_async() with a nonzero `status`, and fluxus_failure_get_message() of the failure
 * (dead-letter and route-observer callbacks, fluxus_pipeline_get_failure(), logs) is `message`.
 * @param status   Nonzero: the item's failure status.
 * @param message  NUL-terminated UTF-8, copied (cut as fluxus_call_set_error() says); NULL or
 *                 "" attaches no text.
 * @return as fluxus_pipeline_complete_async(), and FLUXUS_EINVAL for a status of 0 (use
 *         fluxus_pipeline_complete_async()), FLUXUS_ENOMEM; on any error fluxus took nothing.
 * Thread safety: as fluxus_pipeline_complete_async(): any thread, never blocks.
 */
FLUXUS_API int32_t fluxus_pipeline_fail_async(fluxus_pipeline *p, uint64_t completion, int32_t status,
                                     uint64_t item, const char *message);

/**
 * In-flight limit of an async stage: how many items may be started and not yet gone on
 * (default 256, range 1..1048576). When it is reached the stage stops taking input, and its
 * queue applies backpressure upstream.
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle, not an async stage), FLUXUS_ENOTFOUND,
 *         FLUXUS_ERANGE, FLUXUS_ESTATE (after start).
 */
FLUXUS_API int32_t fluxus_stage_set_in_flight(fluxus_pipeline *p, uint32_t stage, uint32_t max);

/**
 * Per-item time limit at a stage, in microseconds (0 = none, the default; at most one day),
 * measured on the runtime's clock from the moment the stage starts the item.
 *  - Async stages: an item not completed when the limit has passed fails with
 *    FLUXUS_ETIMEDOUT when the stage's worker next handles it (at start + limit exactly while
 *    the worker is free; later while it is parked on a full queue downstream) and follows the
 *    stage's error policy (the dead-letter callback sees the item, but the host still owns it:
 *    the item destructor is not called, and the late completion is refused with
 *    FLUXUS_ETIMEDOUT so the host releases it). The timeouts cost one timer per stage, not per
 *    item.
 *  - Map and filter stages (item and batch forms): a callback cannot be interrupted, so one
 *    that ran longer than the limit has its result discarded and its item(s) fail with
 *    FLUXUS_ETIMEDOUT (for a map, the item it returned is the one failed).
 *  - Sinks, flat maps and dedup: the item has already been consumed when the overrun is seen;
 *    the overrun is only counted in the stage's `timed_out` stat.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ENOTFOUND, FLUXUS_ERANGE, FLUXUS_ESTATE.
 */
FLUXUS_API int32_t fluxus_stage_set_timeout_us(fluxus_pipeline *p, uint32_t stage,
                                               uint64_t timeout_us);

/* ----- Batching ----- */

/**
 * Batch: group items and hand each group to `fn` as an array — for example to insert 500 rows
 * in one statement. A group goes to `fn` when it holds `max_items` items, when its first item
 * has waited `linger_us` (on the runtime's clock), and at the end of input or on drain (the
 * tail). `fn` has the batch flat-map contract: it emits zero or more items with fluxus_emitter_emit()
 * (new admitted items going on), its inputs are consumed (counted as filtered and destroyed
 * unless it calls fluxus_emitter_keep_input()), and a nonzero return fails every item of the
 * group. Unbatching is a flat map. A batch stage runs on one worker and heads its own task.
 * @param max_items  1..65536.
 * @param linger_us  0 (a group goes as soon as no more input is ready) .. one day.
 * @return as the other fluxus_pipeline_add_* functions, and FLUXUS_ERANGE.
 */
FLUXUS_API int32_t fluxus_pipeline_add_batch(uint32_t *out_stage, fluxus_pipeline *p,
                                             const char *name, uint32_t max_items,
                                             uint64_t linger_us, fluxus_flat_map_batch_fn fn,
                                             void *user, fluxus_user_free_fn user_free);

/**
 * Reduce callback: fold `item` into the key's accumulator `*acc` (`first` is 1 for the key's
 * first item, when *acc is 0). The item is consumed: counted as filtered at this stage and
 * destroyed after the call (copy what you need into the accumulator, which is usually a pointer
 * to the host's aggregate). A nonzero return fails the item; the accumulator keeps its value.
 */
typedef int32_t (*fluxus_reduce_fn)(void *user, uint64_t *acc, int32_t first, uint64_t item);

/**
 * Reduce by key (the reduce half of map-reduce; put a map with several workers before it):
 * items are grouped by key — the item word, or what fluxus_stage_set_key_fn() returns, hashed
 * with XXH3 — and folded into one accumulator per key. At the end of input (or on drain) every
 * accumulator goes on as a new item, in order of each key's first item; on cancel they are not
 * emitted (their memory is the host's: `user_free` of the stage can release what is left).
 * With several workers keys are sharded across them (per-key order), each emitting its own.
 * @return as the other fluxus_pipeline_add_* functions.
 */
FLUXUS_API int32_t fluxus_pipeline_add_reduce(uint32_t *out_stage, fluxus_pipeline *p,
                                              const char *name, fluxus_reduce_fn fn, void *user,
                                              fluxus_user_free_fn user_free);

/* Window kinds (per key). */
#define FLUXUS_WINDOW_COUNT 0   /* tumbling: every `size` items of a key */
#define FLUXUS_WINDOW_TIME 1    /* tumbling: aligned periods of `size` microseconds of the
                                   runtime's clock (a window holds the items that arrived in
                                   [k * size, (k + 1) * size)) */
#define FLUXUS_WINDOW_SESSION 2 /* a key's window closes once `size` microseconds passed
                                   without an item of that key */

/**
 * Window callback: aggregate one closed window of a key — `count` items, borrowed for the call,
 * in arrival order; `start_ns` is when the window began (time windows: the period's start). Emit
 * results with fluxus_emitter_emit(). The items are consumed as a batch flat map's inputs are (counted
 * filtered and destroyed after the call unless fluxus_emitter_keep_input()); a nonzero return
 * fails every item of the window.
 */
typedef int32_t (*fluxus_window_fn)(void *user, const uint64_t *items, uint32_t count,
                                    uint64_t start_ns, fluxus_emitter *em);

/**
 * Windows per key (the key is the item word, or what fluxus_stage_set_key_fn() returns):
 * tumbling by count, tumbling by time, or session windows (FLUXUS_WINDOW_*). Time and session
 * windows close on a timer of the runtime's clock, so a quiet key's window still closes. At end
 * of input (or on drain) every open window is closed as it is, partial ones included, in the
 * order they opened; on cancel their items are cancelled. With several workers keys are sharded
 * across them.
 * @param size  Items (COUNT, 1..2^20) or microseconds (TIME, SESSION; 1 .. one day).
 * @return as the other fluxus_pipeline_add_* functions, and FLUXUS_ERANGE for an unknown kind
 *         or a size out of range.
 */
FLUXUS_API int32_t fluxus_pipeline_add_window(uint32_t *out_stage, fluxus_pipeline *p,
                                              const char *name, int32_t kind, uint64_t size,
                                              fluxus_window_fn fn, void *user,
                                              fluxus_user_free_fn user_free);

#ifdef FLUXUS_EXPERIMENTAL /* experimental tier: see "Stability" at the top */
/**
 * Sliding (hopping) windows per key: the windows [k * step, k * step + size), k = 0, 1, 2, ...
 * By count (`kind` FLUXUS_WINDOW_COUNT), over the key's items numbered 0, 1, 2, ... in arrival
 * order: a window fires when its last item arrives, so no partial window leads (size 4, step 2:
 * items [0..3], [2..5], [4..7], ...); `start_ns` is when its first item arrived. By time
 * (FLUXUS_WINDOW_TIME, microseconds), over the runtime's clock, the periods aligned to its
 * zero: a window fires at its end with the key's items that arrived in it (one that holds none
 * does not fire); `start_ns` is its start.
 * `step` below `size` makes windows overlap (an item is in several), equal to it makes them
 * tumbling, above it makes sampling windows with gaps between them: an item in a gap (count:
 * index mod step >= size) is in no window and ends at once, counted filtered and destroyed.
 * At end of input or on drain every window that holds items fires as it is, so trailing
 * partial windows are emitted (count, size 4, step 2, items 0..4: [0..3] when 3 arrives, then
 * [2..4] and [4] at the end); on cancel held items are cancelled.
 * `fn` gets the window's items borrowed, as for fluxus_pipeline_add_window(); an item stays held
 * while a later window may still hold it, and ends (counted filtered and destroyed) when it
 * leaves its last window, or fails, with the callback's status, if the first window it is in
 * (its home) failed. fluxus_emitter_keep_input() has no effect here.
 * @param size, step  Items (COUNT, 1..2^20) or microseconds (TIME, 1 .. one day).
 * @return as fluxus_pipeline_add_window(), and FLUXUS_ERANGE for a size or step of 0 or out of
 *         range, or a kind other than COUNT or TIME.
 */
FLUXUS_API int32_t fluxus_pipeline_add_sliding_window(uint32_t *out_stage, fluxus_pipeline *p,
                                                      const char *name, int32_t kind,
                                                      uint64_t size, uint64_t step,
                                                      fluxus_window_fn fn, void *user,
                                                      fluxus_user_free_fn user_free);
#endif /* FLUXUS_EXPERIMENTAL */

/* ----- Graphs: branches, routers, broadcast, merge, error branches ----- */

/*
 * A pipeline is a directed acyclic graph of stages. Each add_* call attaches the new stage to the
 * current attachment point and makes the new stage's output the next one, so a sequence of adds
 * is a chain, as before graphs existed. A sink ends its chain; so does a router or a broadcast,
 * whose outputs (routes) are chosen with fluxus_pipeline_branch(). Every output must lead, through
 * some chain, to a sink; fluxus_pipeline_start() checks this (FLUXUS_EINVAL naming the stage).
 *
 * Outlets of a stage: 0 (FLUXUS_OUTLET_MAIN) is an ordinary stage's output; a router's or a
 * broadcast's outlets are its routes 0..n-1 (fluxus_stage_add_route()); FLUXUS_OUTLET_ERROR is any
 * stage's error branch: items that fail there (after its retries, including circuit-breaker
 * refusals) go down that branch instead of ending under the error policy. They are counted
 * `routed` at the failing stage, not failed, and end wherever the branch ends them. Join,
 * window, reduce and debounce stages cannot route their failures (fluxus_pipeline_start()
 * refuses it with FLUXUS_EINVAL); batch and loader stages can.
 *
 * Several outlets may lead into one stage (fluxus_pipeline_connect()): a merge. The merged stage
 * has one bounded queue shared by its producers; a producer that finds it full waits, without a
 * thread, like any producer, and is woken when room appears, so a fast branch cannot starve a
 * slow one for long. Backpressure crosses every edge: a router or broadcast whose route is full
 * holds its output until that route has room (a slow branch slows the others).
 *
 * Ownership of copies: a broadcast sends the original item down route 0 and, for each further
 * route, a copy made by the stage's copy callback (fluxus_stage_set_copy()). Each copy is a new
 * item, owned by the pipeline like the original: it is counted `spawned` at the stage (and in
 * the pipeline's `admitted`) and ends exactly once, delivered or destroyed by the item
 * destructor. If a copy cannot be made, the copies already made for that item are destroyed
 * uncounted and the original item fails at the stage (all routes or none).
 */

/** Outlet 0: an ordinary stage's output. */
#define FLUXUS_OUTLET_MAIN 0u
/** The error branch of a stage (see above). */
#define FLUXUS_OUTLET_ERROR 0xFFFFFFFFu
/** Routes of one router or broadcast: at most this many. */
#define FLUXUS_MAX_ROUTES 4096u

/**
 * Router selector: writes the numbers of the routes `item` goes to into routes[0 .. *count) and
 * sets *count (it arrives 0; `capacity` is the router's route count, so any selection fits).
 * The first route listed gets the item itself; each further one a copy, in the order listed,
 * which needs a copy callback. A count of 0 sends the item to the default route, or, without
 * one, fails it with FLUXUS_ENOROUTE. A route at or beyond the route count, or more routes than
 * `capacity`, fails the item with FLUXUS_ERANGE; the same route twice, with FLUXUS_EINVAL. A
 * nonzero return fails the item with that status. The callback borrows the item. Called on a
 * worker thread. The common case is `routes[0] = r; *count = 1;`.
 * @since 0.4 (0.3 selected routes with a 64-bit mask)
 */
typedef int32_t (*fluxus_route_fn)(void *user, uint64_t item, uint32_t *routes,
                                   uint32_t capacity, uint32_t *count);

/**
 * Copy callback: make *copy, a new item equal to `item` for route `route`, owned by the
 * pipeline from then on (the item destructor releases it if it does not reach a sink). Return
 * 0, or nonzero if the copy cannot be made. *copy arrives preset to `item`: for items that are
 * plain values, returning 0 without writing it (or `*copy = item`) is a valid copy.
 */
typedef int32_t (*fluxus_copy_fn)(void *user, uint64_t item, uint32_t route, uint64_t *copy);

/**
 * Router: each item goes to the route(s) its selector chooses. Declare routes with
 * fluxus_stage_add_route(), then attach each route's chain with fluxus_pipeline_branch().
 * A router runs on one worker (it is cheap) and may be fused behind single-worker stages.
 * @param select  The selector (not NULL). `user` is passed to it; `user_free` releases `user`
 *                when the pipeline is freed.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ESTATE (after start, or nothing to attach to),
 *         FLUXUS_ENOMEM, FLUXUS_ERANGE (4096 stages).
 */
FLUXUS_API int32_t fluxus_pipeline_add_router(uint32_t *out_stage, fluxus_pipeline *p,
                                              const char *name, fluxus_route_fn select,
                                              void *user, fluxus_user_free_fn user_free);

/**
 * Broadcast (fan-out): every item goes to every route — the original down route 0, copies
 * (fluxus_stage_set_copy(), required with two routes or more) down the others. Routes are
 * declared and attached as for a router.
 * @return as fluxus_pipeline_add_router().
 */
FLUXUS_API int32_t fluxus_pipeline_add_broadcast(uint32_t *out_stage, fluxus_pipeline *p,
                                                 const char *name);

/**
 * Declare a route of a router or broadcast. Routes are numbered 0, 1, ... in order.
 * @param name       Its name (copied; unique within the stage); for logs and specs.
 * @param out_route  Receives its number (may be NULL).
 * @return FLUXUS_OK, FLUXUS_EINVAL (not a router or broadcast, NULL or duplicate name),
 *         FLUXUS_ENOTFOUND, FLUXUS_ERANGE (more than FLUXUS_MAX_ROUTES), FLUXUS_ESTATE.
 */
FLUXUS_API int32_t fluxus_stage_add_route(uint32_t *out_route, fluxus_pipeline *p, uint32_t stage,
                                          const char *name);

/**
 * The number of a router's route by name. @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ENOTFOUND
 * (no such stage or route).
 */
FLUXUS_API int32_t fluxus_stage_get_route_index(uint32_t *out_route, fluxus_pipeline *p, uint32_t stage,
                                            const char *name);

/**
 * The route a router sends items to when its selector chooses none (default: none, and such
 * items fail with FLUXUS_ENOROUTE). UINT32_MAX removes it.
 * @return FLUXUS_OK, FLUXUS_EINVAL (not a router), FLUXUS_ENOTFOUND (no such stage or route),
 *         FLUXUS_ESTATE.
 */
FLUXUS_API int32_t fluxus_stage_set_default_route(fluxus_pipeline *p, uint32_t stage,
                                                  uint32_t route);

/**
 * The copy callback of a router or broadcast (see "Ownership of copies" above).
 * @return FLUXUS_OK, FLUXUS_EINVAL (NULL fn, not a router or broadcast), FLUXUS_ENOTFOUND,
 *         FLUXUS_ESTATE. `user_free` releases `user` when the pipeline is freed, or when a
 *         later call replaces this callback.
 */
FLUXUS_API int32_t fluxus_stage_set_copy(fluxus_pipeline *p, uint32_t stage, fluxus_copy_fn fn,
                                         void *user, fluxus_user_free_fn user_free);

/**
 * Choose where the next added stage attaches: outlet `outlet` of `stage` (a route number, 0 for
 * an ordinary stage, or FLUXUS_OUTLET_ERROR). The outlet must not lead anywhere yet.
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle; no such outlet: a sink has only its error outlet,
 *         a router only its declared routes; the outlet already leads somewhere),
 *         FLUXUS_ENOTFOUND (no such stage), FLUXUS_ESTATE (after start).
 * Thread safety: any thread, before start.
 */
FLUXUS_API int32_t fluxus_pipeline_branch(fluxus_pipeline *p, uint32_t stage, uint32_t outlet);

/**
 * Merge (fan-in): lead outlet `outlet` of stage `from` into the existing stage `to`, which then
 * takes items from several producers (see above). A connection that would close a loop is
 * refused (retry a stage's failures with fluxus_stage_set_retry(), not with a loop).
 * If the attachment point was this outlet, nothing is attached until the next branch call.
 * @return FLUXUS_OK, FLUXUS_EINVAL (as fluxus_pipeline_branch(); a loop; `to` is a source
 *         stage, which takes no input), FLUXUS_ENOTFOUND, FLUXUS_ESTATE (after start).
 */
FLUXUS_API int32_t fluxus_pipeline_connect(fluxus_pipeline *p, uint32_t from, uint32_t outlet,
                                           uint32_t to);

/**
 * Another pull source (fan-in of sources): a stage with no input whose items come from `fn`,
 * called like the pipeline's pull source (on its own task; FLUXUS_PULL_LATER polls it again
 * after the pipeline's poll interval). The next added stage attaches to it, starting a new
 * chain; lead it into an existing stage with fluxus_pipeline_connect() to merge it with the
 * rest. Its items are admitted like the source's (counted `in` and `out` at this stage).
 * Pause, resume and drain apply to every source. A pipeline may have source stages and no
 * source of its own. Unlike the pipeline's source, it takes no rate limiter and no cursor.
 * @return FLUXUS_OK, FLUXUS_EINVAL (NULL fn), FLUXUS_ESTATE (after start), FLUXUS_ENOMEM,
 *         FLUXUS_ERANGE (4096 stages).
 */
FLUXUS_API int32_t fluxus_pipeline_add_source(uint32_t *out_stage, fluxus_pipeline *p,
                                              const char *name, fluxus_pull_fn fn, void *user,
                                              fluxus_user_free_fn user_free);

#ifdef FLUXUS_EXPERIMENTAL /* experimental tier: see "Stability" at the top */
/* ----- Join by key (and scatter-gather) ----- */

/**
 * Join input callback: sets *input to the input (0..inputs-1) `item` belongs to — for example
 * from a tag in the item, or the branch that produced it. Nonzero return fails the item.
 */
typedef int32_t (*fluxus_join_input_fn)(void *user, uint64_t item, uint32_t *input);

/**
 * Join by key: items of `inputs` inputs (usually branches merged into the join with
 * fluxus_pipeline_connect()) wait per key (the stage's key function, or the item word) until
 * every input has one; then `fn` gets them, borrowed, in input order (count == inputs;
 * `start_ns` is when the key's first item arrived) and emits what goes on, as a window's
 * aggregate callback does (fluxus_pipeline_add_window()): the joined items are then consumed
 * (counted filtered, destroyed unless fluxus_emitter_keep_input()). A nonzero return fails the
 * joined items with that status.
 * Items that cannot join fail at the stage under its error policy: a key still incomplete after
 * the join timeout (FLUXUS_ETIMEDOUT; swept in arrival order, no scan) or at end of input
 * (FLUXUS_ECLOSED, also on drain); a second item for an input of a key still waiting
 * (FLUXUS_EINVAL); a new key while max_keys keys wait (FLUXUS_EFULL); an input number out of
 * range (FLUXUS_ERANGE). With several workers keys are spread across them (per key).
 * Scatter-gather is a broadcast whose routes do the N calls (each route its own stage, so the
 * calls run in parallel, asynchronously if they are async stages) and connect into a join
 * keyed by the request, whose input callback names the route the result came from.
 * @param inputs  1..64.
 * @return FLUXUS_OK, FLUXUS_EINVAL (NULL callback), FLUXUS_ERANGE (inputs), FLUXUS_ESTATE,
 *         FLUXUS_ENOMEM.
 */
FLUXUS_API int32_t fluxus_pipeline_add_join(uint32_t *out_stage, fluxus_pipeline *p,
                                            const char *name, uint32_t inputs,
                                            fluxus_join_input_fn input_of, fluxus_window_fn fn,
                                            void *user, fluxus_user_free_fn user_free);

/**
 * How long a join key may wait for its other inputs (default 0: until end of input).
 * @return FLUXUS_OK, FLUXUS_EINVAL (not a join), FLUXUS_ERANGE (over a day), FLUXUS_ENOTFOUND,
 *         FLUXUS_ESTATE.
 */
FLUXUS_API int32_t fluxus_stage_set_join_timeout_us(fluxus_pipeline *p, uint32_t stage,
                                                    uint64_t timeout_us);

/**
 * Most keys a join holds waiting (per worker; default 1 048 576); 0 is refused.
 * @return FLUXUS_OK, FLUXUS_EINVAL (not a join), FLUXUS_ERANGE (0), FLUXUS_ENOTFOUND,
 *         FLUXUS_ESTATE.
 */
FLUXUS_API int32_t fluxus_stage_set_join_max_keys(fluxus_pipeline *p, uint32_t stage,
                                                  uint64_t max_keys);
#endif /* FLUXUS_EXPERIMENTAL */

#ifdef FLUXUS_EXPERIMENTAL /* experimental tier: see "Stability" at the top */
/* ----- Dataloader and cache ----- */

/**
 * Load callback: one call for a group's distinct keys. items[i] is the first item of the group
 * with key i; set results[i] to its result (an item word: fluxus owns it from then on and
 * releases it with the item destructor once it is no longer needed, or keeps it in the stage's
 * cache) or status[i] nonzero to fail every item waiting for that key (results[i] is then
 * ignored). results[] and status[] arrive zeroed. A nonzero return fails the whole group, and every
 * results[] slot is ignored: release anything the call allocated before returning nonzero.
 */
typedef int32_t (*fluxus_load_fn)(void *user, const uint64_t *items, uint32_t count,
                                  uint64_t *results, int32_t *status);
/**
 * Attach callback: make the output of `item` from its key's `result` (borrowed: copy what you
 * keep). *out arrives preset to `item`. On 0 the callback owns `item`, as a map does, and *out
 * goes on; nonzero fails `item`.
 */
typedef int32_t (*fluxus_attach_fn)(void *user, uint64_t item, uint64_t result, uint64_t *out);

/**
 * Loader (dataloader): items are grouped, as by fluxus_pipeline_add_batch() (at most
 * `max_items`, a group waits at most `window_us` after its first item, the tail is flushed at
 * end of input); the group's keys (the stage's key function, or the item word) are coalesced,
 * `load` is called once for the distinct keys (minus those its cache answers, see
 * fluxus_stage_set_cache()), and every item then gets its own output from `attach`, in input
 * order. One output per input item, like a map. Runs on one worker.
 * @return FLUXUS_OK, FLUXUS_EINVAL (NULL callback), FLUXUS_ERANGE (max_items not in 1..65536,
 *         window_us over a day), FLUXUS_ESTATE, FLUXUS_ENOMEM.
 */
FLUXUS_API int32_t fluxus_pipeline_add_loader(uint32_t *out_stage, fluxus_pipeline *p,
                                              const char *name, uint32_t max_items,
                                              uint64_t window_us, fluxus_load_fn load,
                                              fluxus_attach_fn attach, void *user,
                                              fluxus_user_free_fn user_free);

/**
 * Cache in front of a map or a loader stage: results are kept per key (the stage's key
 * function, or the item word) for `ttl_us` (0: until evicted), at most `max_entries` keys per
 * worker, least recently used evicted first. A repeated key is answered without calling the
 * stage: for a map, the input is destroyed (item destructor) and the output is a copy of the
 * cached output made by `copy` (`route` is 0; NULL: outputs are plain values, handed out as
 * they are); for a loader, the cached result goes to the attach callback. Cached values are
 * released with the item destructor when they leave the cache or the stage ends. Counted in
 * the stage's cache_hits and cache_misses. A map with a cache is not checked against the
 * stage timeout (fluxus_stage_set_timeout_us). Not with a cursor source (the watermark follows
 * items, and a cached output is not the input's). 0 entries removes the cache. Setting it
 * again replaces the cache settings and `copy` (the previous user_free runs then).
 * @return FLUXUS_OK, FLUXUS_EINVAL (not a map or loader, checked at start), FLUXUS_ERANGE
 *         (ttl over a day), FLUXUS_ENOTFOUND, FLUXUS_ESTATE.
 */
FLUXUS_API int32_t fluxus_stage_set_cache(fluxus_pipeline *p, uint32_t stage,
                                          uint64_t max_entries, uint64_t ttl_us,
                                          fluxus_copy_fn copy, void *user,
                                          fluxus_user_free_fn user_free);
#endif /* FLUXUS_EXPERIMENTAL */

/* ----- Retry ----- */

/* Backoff between attempts. */
#define FLUXUS_BACKOFF_CONSTANT 0           /* base_us every time */
#define FLUXUS_BACKOFF_EXPONENTIAL 1        /* base_us, 2 x base_us, 4 x ..., at most max_us */
#define FLUXUS_BACKOFF_EXPONENTIAL_JITTER 2 /* uniform in [0, the exponential delay] ("full
                                               jitter"), reproducible from the seed */

/**
 * Retry predicate: return 1 to retry the item after the failure `status` of attempt `attempt`
 * (1 for the first call), 0 to let it fail now. Called on the worker thread; must not block.
 */
typedef int32_t (*fluxus_retry_fn)(void *user, uint64_t item, int32_t status, uint32_t attempt);

/**
 * Retry items whose callback fails at this stage (a nonzero return or a thrown exception; for
 * async stages also a refusal or a completion with a nonzero status), up to `max_attempts`
 * calls in all. Between attempts the item waits for its backoff on a timer: no worker thread
 * blocks, the item still counts as in flight, and the stage goes on with other items (so a
 * retried item may come out after items that passed meanwhile). When the attempts are used up,
 * or the predicate says no, the item fails as the stage's error policy says, and the
 * dead-letter callback's fluxus_failure_get_attempts() tells how many attempts it had (its calls,
 * plus a last attempt a circuit breaker refused, if so). Queue overflow, key-function failures,
 * circuit-breaker refusals and async timeouts (the host still holds a timed-out item) are not
 * retried. A retrying stage heads its own task; with several workers it must be unordered or
 * per-key (checked at start). Batch, loader, join, window, reduce and debounce stages do not
 * retry (start refuses it with FLUXUS_EINVAL). Stage stats count `retries` and the items `retry_waiting` now.
 * @param max_attempts  1 (no retry, the default) .. 1000.
 * @param backoff       FLUXUS_BACKOFF_*.
 * @param base_us       First delay, 0 .. one day.
 * @param max_us        Largest delay, base_us .. one day.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ENOTFOUND, FLUXUS_ERANGE, FLUXUS_ESTATE (after start).
 */
FLUXUS_API int32_t fluxus_stage_set_retry(fluxus_pipeline *p, uint32_t stage,
                                          uint32_t max_attempts, int32_t backoff,
                                          uint64_t base_us, uint64_t max_us);

/**
 * Decide per failure whether to retry (see fluxus_retry_fn); NULL retries every failure.
 * Setting it again replaces it (the previous user_free runs then).
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ENOTFOUND, FLUXUS_ESTATE (after start).
 */
FLUXUS_API int32_t fluxus_stage_set_retry_predicate(fluxus_pipeline *p, uint32_t stage,
                                                    fluxus_retry_fn fn, void *user,
                                                    fluxus_user_free_fn user_free);

/**
 * Seed of the jitter of FLUXUS_BACKOFF_EXPONENTIAL_JITTER (default 0). Worker w of the stage
 * draws its n-th delay (n = 1, 2, ...) as splitmix64(seed + w + n x 0x9E3779B97F4A7C15) mod
 * (d + 1) nanoseconds, where d is the exponential delay in nanoseconds, so a schedule can be
 * checked exactly.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ENOTFOUND, FLUXUS_ESTATE (after start).
 */
FLUXUS_API int32_t fluxus_stage_set_retry_seed(fluxus_pipeline *p, uint32_t stage, uint64_t seed);

/**
 * Error route: the stage's failed items (after its retries) go to `target`, a pipeline with a
 * push source (a dead-letter pipeline, or a repair pipeline), instead of ending under the error
 * policy. Here they count as dead-lettered; in `target` they are admitted like pushed items and
 * owned by it. A full `target` applies backpressure: the stage holds its routed items and takes
 * no input until they fit (it re-tries every millisecond, without a thread). If `target` is
 * closed, cancelled or freed, routed items fail here (counted failed, destroyed) and a warning
 * is logged. Routes between branches of one pipeline come with the graph topologies.
 * Freeing `target` while items are being routed to it is safe: the free waits for the push in
 * progress. A routing stage heads its own task.
 * @param target  A live pipeline with a push source, not `p` itself; NULL removes the route.
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handles, target == p, target has no push source),
 *         FLUXUS_ENOTFOUND, FLUXUS_ESTATE (after start).
 */
FLUXUS_API int32_t fluxus_stage_set_error_route(fluxus_pipeline *p, uint32_t stage,
                                                fluxus_pipeline *target);

/* ----- Per-key timing: debounce and throttle ----- */

/**
 * Debounce: per key, hold the latest item and pass it on only once the key has been quiet (no
 * new item) for `quiet_us` microseconds on the runtime's clock. A newer item of the same key
 * replaces the held one, which ends as filtered (destroyed). At end of input (or drain) every
 * held item is passed on at once; on cancel they are cancelled. The key is the item word, or
 * what fluxus_stage_set_key_fn() returns. At most 1 << 20 keys are held by default
 * (fluxus_stage_set_debounce_max_keys()); a new key beyond that sends the longest-held key's
 * item on early. With several workers keys are sharded across them (per-key order).
 * @return as the other fluxus_pipeline_add_* functions, and FLUXUS_ERANGE for a period of 0 or
 *         more than one day.
 */
FLUXUS_API int32_t fluxus_pipeline_add_debounce(uint32_t *out_stage, fluxus_pipeline *p,
                                                const char *name, uint64_t quiet_us);

/**
 * Throttle: per key, at most one item per `period_us` microseconds: the first item of a key
 * passes, later ones within the period are filtered (destroyed). A key is forgotten one period
 * after it last passed, so memory follows the number of keys active within one period. Keys
 * and workers as for debounce.
 * @return as fluxus_pipeline_add_debounce().
 */
FLUXUS_API int32_t fluxus_pipeline_add_throttle(uint32_t *out_stage, fluxus_pipeline *p,
                                                const char *name, uint64_t period_us);

/**
 * Bound on the keys a debounce stage holds at once (default 1 << 20; at least 1).
 * @return FLUXUS_OK, FLUXUS_EINVAL (not a debounce stage), FLUXUS_ENOTFOUND, FLUXUS_ERANGE,
 *         FLUXUS_ESTATE.
 */
FLUXUS_API int32_t fluxus_stage_set_debounce_max_keys(fluxus_pipeline *p, uint32_t stage,
                                                      uint64_t max_keys);

/* ----- Stage options (all: before start; FLUXUS_ENOTFOUND for a bad stage index) ----- */

/*
 * Every scalar option of a stage, of a pipeline and of a runtime has a number, FLUXUS_OPT_*,
 * pinned forever (never reused), and is set and read through one pair of calls per object; fluxus_option_get_bounds() gives its range and
 * fluxus_option_get_name() its name, which is also its keyword in the spec language
 * (fluxus_pipeline_build()). Durations are in microseconds. Options that belong together (a
 * retry's attempts, backoff and delays) may be set in any order: what must agree between them
 * is checked by fluxus_pipeline_start(). The typed setters below (fluxus_stage_set_workers()...)
 * are the same options under older names; they go away before 1.0.
 */
#define FLUXUS_OPT_WORKERS 1              /* workers running the stage in parallel: 1..256 */
#define FLUXUS_OPT_ORDER 2                /* FLUXUS_ORDER_* */
#define FLUXUS_OPT_REORDER_WINDOW 3       /* ordered stages: batches held for reordering;
                                             0: 4 per worker (default) */
#define FLUXUS_OPT_QUEUE_CAPACITY 4       /* items in the stage's input queue (1024) */
#define FLUXUS_OPT_OVERFLOW 5             /* FLUXUS_OVERFLOW_* when the input queue is full */
#define FLUXUS_OPT_OVERFLOW_TIMEOUT_US 6  /* FLUXUS_OVERFLOW_BLOCK_TIMEOUT: longest wait */
#define FLUXUS_OPT_ERROR_POLICY 7         /* FLUXUS_ERROR_* */
#define FLUXUS_OPT_IN_FLIGHT 8            /* async stages: items started, not yet completed */
#define FLUXUS_OPT_TIMEOUT_US 9           /* per-item time limit (0: none); a join: how long
                                             an incomplete key waits */
#define FLUXUS_OPT_RETRY_ATTEMPTS 10      /* calls per item, retries included (1: no retry) */
#define FLUXUS_OPT_RETRY_BACKOFF 11       /* FLUXUS_BACKOFF_* (EXPONENTIAL) */
#define FLUXUS_OPT_RETRY_BASE_US 12       /* first retry delay (1000) */
#define FLUXUS_OPT_RETRY_MAX_US 13        /* longest retry delay, at least the base (1000000) */
#define FLUXUS_OPT_RETRY_SEED 14          /* seed of the jitter (any 64-bit value) */
#define FLUXUS_OPT_MAX_KEYS 15            /* dedup (0: no bound, else at least 2), debounce
                                             and join (at least 1): keys remembered at most */
#define FLUXUS_OPT_DEDUP_TTL_US 16        /* dedup: a key is forgotten this long after it
                                             passed (0: never) */
#define FLUXUS_OPT_DEDUP_LAST_KEYS 17     /* dedup: remember only the last N distinct keys */
#define FLUXUS_OPT_DEFAULT_ROUTE 18       /* routers: where an empty choice goes (-1: none) */
#define FLUXUS_OPT_PAUSE_AFTER_FAILURES 19 /* pause the source after this many failures here
                                              within the window (0: never) */
#define FLUXUS_OPT_PAUSE_WINDOW_US 20     /* ... the window */
#define FLUXUS_OPT_PAUSE_US 21            /* ... and how long the pause lasts */

/* Pipeline-wide options (fluxus_pipeline_set_option()): */
#define FLUXUS_OPT_BATCH_SIZE 100         /* items a worker takes at a time: 1..65536 (256) */
#define FLUXUS_OPT_FUSION 101             /* 1: run chains of cheap stages item by item (1) */
#define FLUXUS_OPT_POLL_INTERVAL_US 102   /* pull sources: wait after FLUXUS_PULL_LATER (1000) */
/* Runtime options (fluxus_runtime_set_option()): */
#define FLUXUS_OPT_RUNTIME_WORKERS 200    /* worker threads, 0: host-driven (the CPU count) */
#define FLUXUS_OPT_SPIN_US 201            /* how long an idle worker spins before it sleeps
                                             (50) */
#define FLUXUS_OPT_STALL_THRESHOLD_US 202 /* a callback running longer is reported and a worker
                                             added: 0 (off) or 10000.., whole milliseconds
                                             (1000000) */

/**
 * Set option `option` of a stage to `value`.
 * @return FLUXUS_OK; FLUXUS_EINVAL (bad handle, unknown option, or an option that does not apply
 *         to this stage's kind: the message names the kinds it applies to); FLUXUS_ENOTFOUND (no
 *         such stage, or no such route for FLUXUS_OPT_DEFAULT_ROUTE); FLUXUS_ERANGE (value out
 *         of the option's bounds, or one of the few values an option refuses inside them, such
 *         as 1 for a dedup stage's FLUXUS_OPT_MAX_KEYS); FLUXUS_ESTATE (after start).
 * Thread safety: any thread, before start; not concurrently with other calls building `p`.
 * @since 0.4
 */
FLUXUS_API int32_t fluxus_stage_set_option(fluxus_pipeline *p, uint32_t stage, int32_t option,
                                           int64_t value);

/**
 * Read option `option` of a stage: what was set, or the default.
 * @param[out] out  Receives the value.
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle, NULL out, unknown option, or an option that
 *         does not apply to this stage's kind), FLUXUS_ENOTFOUND (no such stage).
 * Thread safety: any thread, at any time; not concurrently with a call setting it.
 * @since 0.4
 */
FLUXUS_API int32_t fluxus_stage_get_option(int64_t *out, fluxus_pipeline *p, uint32_t stage,
                                           int32_t option);

/**
 * Set a pipeline-wide option (FLUXUS_OPT_BATCH_SIZE, _FUSION, _POLL_INTERVAL_US).
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle, not a pipeline option), FLUXUS_ERANGE,
 *         FLUXUS_ESTATE (after start).
 * Thread safety: any thread, before start; not concurrently with other calls building `p`.
 * @since 0.4
 */
FLUXUS_API int32_t fluxus_pipeline_set_option(fluxus_pipeline *p, int32_t option, int64_t value);

/**
 * Read a pipeline-wide option.
 * @param[out] out  Receives the value.
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle, NULL out, not a pipeline option).
 * Thread safety: any thread, at any time; not concurrently with a call setting it.
 * @since 0.4
 */
FLUXUS_API int32_t fluxus_pipeline_get_option(int64_t *out, fluxus_pipeline *p, int32_t option);

/**
 * Set a runtime option (FLUXUS_OPT_RUNTIME_WORKERS, _SPIN_US, _STALL_THRESHOLD_US).
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle, not a runtime option), FLUXUS_ERANGE,
 *         FLUXUS_ESTATE (the runtime has started).
 * Thread safety: any thread, before the runtime starts.
 * @since 0.4
 */
FLUXUS_API int32_t fluxus_runtime_set_option(fluxus_runtime *rt, int32_t option, int64_t value);

/**
 * Read a runtime option.
 * @param[out] out  Receives the value.
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle, NULL out, not a runtime option).
 * Thread safety: any thread.
 * @since 0.4
 */
FLUXUS_API int32_t fluxus_runtime_get_option(int64_t *out, fluxus_runtime *rt, int32_t option);

/**
 * The values option `option` accepts: out_min..out_max, both included (a few options refuse a
 * value inside; their FLUXUS_OPT_* line says which).
 * @param[out] out_min  Receives the smallest value accepted.
 * @param[out] out_max  Receives the largest.
 * @return FLUXUS_OK, FLUXUS_EINVAL (NULL out, unknown option).
 * Thread safety: any thread.
 * @since 0.4
 */
FLUXUS_API int32_t fluxus_option_get_bounds(int64_t *out_min, int64_t *out_max, int32_t option);

/**
 * The name of option `option` ("workers", "timeout_us"...): its keyword in the spec language.
 * @param[out] out  Receives a static string.
 * @return FLUXUS_OK, FLUXUS_EINVAL (NULL out, unknown option).
 * Thread safety: any thread.
 * @since 0.4
 */
FLUXUS_API int32_t fluxus_option_get_name(const char **out, int32_t option);

/**
 * The option named `name` (as fluxus_option_get_name() gives it).
 * @param[out] out  Receives its FLUXUS_OPT_* number.
 * @return FLUXUS_OK, FLUXUS_EINVAL (NULL argument), FLUXUS_ENOTFOUND (no option of that name).
 * Thread safety: any thread.
 * @since 0.4
 */
FLUXUS_API int32_t fluxus_option_get_id(int32_t *out, const char *name);

/**
 * Parse a value of option `option` from text, as the spec language does: a decimal number, or
 * for enumerated options the name of a value ("unordered", "dead_letter", "jitter"; the names
 * are the FLUXUS_ORDER_*, FLUXUS_OVERFLOW_*, FLUXUS_ERROR_* and FLUXUS_BACKOFF_* constants'
 * last words in lower case, except "jitter" for FLUXUS_BACKOFF_EXPONENTIAL_JITTER), or "none"
 * for FLUXUS_OPT_DEFAULT_ROUTE. Bounds are not checked here (fluxus_stage_set_option() does).
 * @param[out] out  Receives the value.
 * @return FLUXUS_OK, FLUXUS_EINVAL (NULL argument, unknown option, text that is neither a
 *         number in the int64_t range nor one of the option's value names).
 * Thread safety: any thread.
 * @since 0.4
 */
FLUXUS_API int32_t fluxus_option_parse_value(int64_t *out, int32_t option, const char *text);

/**
 * Number of workers running the stage in parallel (default 1, range 1..256). A sink or a dedup
 * stage with several workers needs FLUXUS_ORDER_PER_KEY (dedup switches to it by itself).
 * N workers run up to N items at once whatever the batch size: the workers of a map, filter or
 * flat-map stage (not per-key) share their batches, a worker with nothing to do taking the
 * unstarted part of a sibling's batch, so 10 items that arrive in one batch on a stage with 4
 * workers run 4 at a time (ordered output stays in input order). A per-key stage runs each key's
 * items on one worker, one at a time, in order. Host-driven runtimes do the same with the host
 * threads inside fluxus_runtime_run_for(). Cancel and fail-fast stop between items.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ENOTFOUND, FLUXUS_ERANGE, FLUXUS_ESTATE.
 */
FLUXUS_API int32_t fluxus_stage_set_workers(fluxus_pipeline *p, uint32_t stage, uint32_t n);

/* Output order of a stage. */
#define FLUXUS_ORDER_ORDERED 0   /* output in input order, even with several workers (default) */
#define FLUXUS_ORDER_UNORDERED 1 /* output in completion order */
#define FLUXUS_ORDER_PER_KEY 2   /* same key -> same worker, in order; keys run in parallel */

/**
 * Set the stage's order mode (one of FLUXUS_ORDER_*).
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ENOTFOUND, FLUXUS_ERANGE (unknown mode), FLUXUS_ESTATE.
 */
FLUXUS_API int32_t fluxus_stage_set_order(fluxus_pipeline *p, uint32_t stage, int32_t mode);

/**
 * Reorder window of an ordered stage with several workers, in batches (default 4 per worker,
 * range 1..4096). It bounds how far fast workers may run ahead of a slow one.
 */
FLUXUS_API int32_t fluxus_stage_set_reorder_window(fluxus_pipeline *p, uint32_t stage,
                                                   uint32_t batches);

/**
 * Capacity of the queue in front of the stage, in items (default 1024, range 1..(1<<24)). With
 * FLUXUS_ORDER_PER_KEY each worker has a queue of this capacity.
 */
FLUXUS_API int32_t fluxus_stage_set_queue_capacity(fluxus_pipeline *p, uint32_t stage,
                                                   uint32_t items);

/* What a full queue does with items that do not fit. */
#define FLUXUS_OVERFLOW_BLOCK 0         /* the producer waits (backpressure; default) */
#define FLUXUS_OVERFLOW_BLOCK_TIMEOUT 1 /* the producer waits up to timeout_ms, then the items
                                           fail with FLUXUS_ETIMEDOUT at this stage */
#define FLUXUS_OVERFLOW_DROP_NEWEST 2   /* the items that do not fit are dropped */
#define FLUXUS_OVERFLOW_DROP_OLDEST 3   /* the oldest queued items are dropped to make room */
#define FLUXUS_OVERFLOW_FAIL 4          /* the items that do not fit fail with FLUXUS_EFULL */

/**
 * Set the overflow policy of the queue in front of the stage. Items dropped by DROP_NEWEST or
 * DROP_OLDEST are counted in the stage's `in`, `dropped` and `failed` counters and destroyed;
 * items failed by FAIL or BLOCK_TIMEOUT are counted in `in` and follow the stage's error policy
 * (they are not `dropped`). A stage with a policy other than BLOCK always gets a real queue (it is not fused with
 * the stage before it). `timeout_ms` is used by FLUXUS_OVERFLOW_BLOCK_TIMEOUT only.
 * Host pushes use their own timeout instead of BLOCK_TIMEOUT's.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ENOTFOUND, FLUXUS_ERANGE, FLUXUS_ESTATE.
 */
FLUXUS_API int32_t fluxus_stage_set_overflow(fluxus_pipeline *p, uint32_t stage, int32_t policy,
                                             uint32_t timeout_ms);

/* What happens to an item whose callback fails at a stage. */
#define FLUXUS_ERROR_FAIL_FAST 0   /* the item fails and the pipeline stops with FLUXUS_EFAILED:
                                      no other callback starts, every other item not yet
                                      delivered is cancelled (default; see "Stopping") */
#define FLUXUS_ERROR_SKIP 1        /* the item is counted as failed and destroyed */
#define FLUXUS_ERROR_DEAD_LETTER 2 /* the dead-letter callback gets it, then it is destroyed */

/**
 * Set the stage's error policy (one of FLUXUS_ERROR_*).
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ENOTFOUND, FLUXUS_ERANGE (unknown policy),
 *         FLUXUS_ESTATE.
 */
FLUXUS_API int32_t fluxus_stage_set_error_policy(fluxus_pipeline *p, uint32_t stage,
                                                 int32_t policy);

/**
 * Per-worker hooks, called on the thread that runs that worker: `init` when the worker first
 * runs, which is right after the pipeline starts, whether or not it ever gets an item (a nonzero
 * return stops the pipeline with FLUXUS_EFAILED); `close` after its last item, when its input
 * has ended or the pipeline was cancelled; `close` is not called if `init` failed. Both receive the stage's `user` and the worker index (0..workers-1).
 * Either may be NULL.
 */
typedef int32_t (*fluxus_worker_init_fn)(void *user, uint32_t worker);
typedef void (*fluxus_worker_close_fn)(void *user, uint32_t worker);
FLUXUS_API int32_t fluxus_stage_set_worker_hooks(fluxus_pipeline *p, uint32_t stage,
                                                 fluxus_worker_init_fn init,
                                                 fluxus_worker_close_fn close);

/**
 * Key function for dedup and FLUXUS_ORDER_PER_KEY: point *key at the key's bytes and set *len.
 * The bytes must stay valid until the next call on the same worker. Nonzero return fails the
 * item. Without a key function the key is the item word. Setting it again replaces it (the
 * previous user_free runs then); `fn` NULL goes back to the item word.
 */
typedef int32_t (*fluxus_key_fn)(void *user, uint64_t item, const void **key, size_t *len);
FLUXUS_API int32_t fluxus_stage_set_key_fn(fluxus_pipeline *p, uint32_t stage, fluxus_key_fn fn,
                                           void *user, fluxus_user_free_fn user_free);

/**
 * Bound a dedup stage's memory to about `max_keys` keys (0 = unbounded, the default). A bounded
 * set keeps two generations of at most max_keys/2 keys each: when the newer one is full, the
 * older one is forgotten. So the last max_keys/2 distinct keys are always remembered, an older
 * key may pass a second time, and every forgotten key is counted in `dedup_forgotten`.
 * @return FLUXUS_OK, FLUXUS_EINVAL (not a dedup stage), FLUXUS_ERANGE (1), FLUXUS_ESTATE.
 */
FLUXUS_API int32_t fluxus_stage_set_dedup_max_keys(fluxus_pipeline *p, uint32_t stage,
                                                   uint64_t max_keys);

/**
 * Windowed dedup, for streams that never end: remember a key only for `ttl_us` after it passed
 * (on the runtime's clock; a repeat within that time is filtered, one after it passes again).
 * Memory follows the keys seen within one ttl. 0 turns it off (the default). Not with the other
 * dedup bounds (checked at start). With several workers each keeps its own shard of the keys.
 * @return FLUXUS_OK, FLUXUS_EINVAL (not a dedup stage), FLUXUS_ENOTFOUND, FLUXUS_ERANGE (above
 *         one day), FLUXUS_ESTATE.
 */
FLUXUS_API int32_t fluxus_stage_set_dedup_ttl_us(fluxus_pipeline *p, uint32_t stage,
                                                 uint64_t ttl_us);

/**
 * Windowed dedup: remember exactly the last `keys` distinct keys (a sliding window over keys);
 * a key repeated while among them is filtered, the oldest is forgotten when a new one comes
 * (counted in `dedup_forgotten`). 0 turns it off. Not with the other dedup bounds.
 * @return FLUXUS_OK, FLUXUS_EINVAL (not a dedup stage), FLUXUS_ENOTFOUND, FLUXUS_ESTATE.
 */
FLUXUS_API int32_t fluxus_stage_set_dedup_window(fluxus_pipeline *p, uint32_t stage,
                                                 uint64_t keys);

#ifdef FLUXUS_EXPERIMENTAL /* experimental tier: see "Stability" at the top */
/* ---------------------------------------------------------------------------------------------
 * Declarative pipelines: a registry of named callbacks and a textual spec
 * ------------------------------------------------------------------------------------------- */

typedef struct fluxus_registry fluxus_registry;

/* Kinds of registered callbacks: what `fn` really is. */
#define FLUXUS_FN_MAP 1             /* fluxus_map_fn */
#define FLUXUS_FN_MAP_BATCH 2       /* fluxus_map_batch_fn */
#define FLUXUS_FN_FILTER 3          /* fluxus_filter_fn */
#define FLUXUS_FN_FILTER_BATCH 4    /* fluxus_filter_batch_fn */
#define FLUXUS_FN_FLAT_MAP 5        /* fluxus_flat_map_fn */
#define FLUXUS_FN_FLAT_MAP_BATCH 6  /* fluxus_flat_map_batch_fn (also batch stages) */
#define FLUXUS_FN_SINK 7            /* fluxus_sink_fn */
#define FLUXUS_FN_SINK_BATCH 8      /* fluxus_sink_batch_fn */
#define FLUXUS_FN_ASYNC_MAP 9       /* fluxus_async_map_fn */
#define FLUXUS_FN_REDUCE 10         /* fluxus_reduce_fn */
#define FLUXUS_FN_WINDOW 11         /* fluxus_window_fn */
#define FLUXUS_FN_ROUTE 12          /* fluxus_route_fn */
#define FLUXUS_FN_COPY 13           /* fluxus_copy_fn */
#define FLUXUS_FN_KEY 14            /* fluxus_key_fn */
#define FLUXUS_FN_RETRY_IF 15       /* fluxus_retry_fn */
#define FLUXUS_FN_PULL 16           /* fluxus_pull_fn (a pull source) */
#define FLUXUS_FN_LOAD 17           /* fluxus_load_fn (loader stages) */
#define FLUXUS_FN_ATTACH 18         /* fluxus_attach_fn (loader stages) */
#define FLUXUS_FN_JOIN_INPUT 19     /* fluxus_join_input_fn (join stages) */

/** Any callback, cast; the kind says what it is. */
typedef void (*fluxus_any_fn)(void);

/**
 * Create an empty registry. Pipelines built from it keep it alive (its `user` pointers are
 * released when the last of the registry handle and those pipelines is freed).
 * @return FLUXUS_OK, FLUXUS_EINVAL (out NULL), FLUXUS_ENOMEM.
 */
FLUXUS_API int32_t fluxus_registry_new(fluxus_registry **out);

/**
 * Release the host's handle. Pipelines built from the registry keep using it. NULL is accepted
 * and ignored.
 * @return FLUXUS_OK, FLUXUS_EINVAL (already freed).
 */
FLUXUS_API int32_t fluxus_registry_free(fluxus_registry *r);

/**
 * Register `fn` (of kind FLUXUS_FN_*) under `name` (copied; letters, digits and '_', not
 * starting with a digit). `user` is passed to it in every stage built from it; `user_free`
 * runs once when the registry is finally released.
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle, NULL fn, bad name, unknown kind, name taken).
 * Thread safety: any thread; not concurrently with a build from the same registry.
 */
FLUXUS_API int32_t fluxus_registry_add(fluxus_registry *r, const char *name, int32_t kind,
                                       fluxus_any_fn fn, void *user,
                                       fluxus_user_free_fn user_free);

/**
 * Build stages into `p` (which has not started) from a textual spec naming registered
 * callbacks. The grammar:
 *
 *     spec   := [ 'pipeline' '(' args ')' ';' ] chain ( ';' chain )*
 *                                          each chain after the first starts with source(PULL)
 *     chain  := step ( '|' step )*
 *     step   := KIND [ '(' args ')' ] [ 'as' NAME ] [ block ]
 *             | NAME                     a registered map, filter, flat map or sink by name
 *             | '@' NAME                 merge into the stage called NAME (ends the chain)
 *     args   := arg ( ',' arg )*         arg := CALLBACK | OPTION '=' VALUE
 *     block  := '{' ( LABEL ':' chain [ ';' | ',' ] )* '}'
 *
 * The first chain starts at the pipeline's source; a further chain starts at a source of its
 * own (fluxus_pipeline_add_source()) and usually ends by merging into a named stage ('@NAME').
 * KIND is one of source, map, map_batch, filter, filter_batch, flat_map, flat_map_batch, sink,
 * sink_batch, async_map, reduce, window, batch, loader, join, dedup, throttle, debounce,
 * router, broadcast.
 * The first positional argument is the registered callback (source takes a FLUXUS_FN_PULL one,
 * or nothing when the host sets the source). A router's or broadcast's block declares its
 * routes, in order, each with its chain; any other stage's block may hold `error: chain`, its
 * error branch, and the chain goes on after the block. Stage names are the callback's name
 * unless `as NAME` is given. '#' starts a comment; newlines are spaces.
 * Options (VALUE is a number or a word): every stage option FLUXUS_OPT_* by its name
 * (fluxus_option_get_name(); values as fluxus_option_parse_value() reads them):
 *     workers=N  order=ordered|unordered|per_key  reorder_window=N  capacity=N
 *     overflow=block|block_timeout|drop_newest|drop_oldest|fail  overflow_timeout_us=N
 *     on_error=fail_fast|skip|dead_letter  in_flight=N  timeout_us=N
 *     retry=ATTEMPTS  backoff=constant|exponential|jitter  delay_us=N  max_delay_us=N
 *     retry_seed=N  max_keys=N  ttl_us=N  last=N
 *     pause_after_failures=N  pause_window_us=N  pause_us=N
 * pipeline options (FLUXUS_OPT_BATCH_SIZE...) by their names in the leading pipeline(...):
 *     pipeline(batch_size=64, fusion=0); source | ...
 * and these, which name callbacks or take other values:
 *     retry_if=CALLBACK  key=CALLBACK
 *     router/broadcast: copy=CALLBACK  default=LABEL (a route's label)
 *     batch: size=N linger_us=N
 *     window: kind=count|time|session size=N step=N      throttle: period_us=N
 *     debounce: quiet_us=N
 *     loader: attach=CALLBACK size=N linger_us=N     join: inputs=N input=CALLBACK
 *             timeout_us=N max_keys=N     map, loader: cache=ENTRIES cache_ttl_us=N
 *             cache_copy=CALLBACK
 * Example:
 *     source | map(parse, workers=4, order=unordered, on_error=dead_letter)
 *            | router(by_kind) { click: map(enrich) | @store ; view: sink(count) }
 *     ...where `store` is a sink declared earlier in the text with `sink(write) as store`.
 *
 * @return FLUXUS_OK; FLUXUS_EINVAL with fluxus_last_error_message() as
 *         "spec:LINE:COL: what was expected or what is wrong" (also for values a stage refuses,
 *         with that stage's message after the position); FLUXUS_ESTATE (started);
 *         FLUXUS_ENOMEM. On failure the pipeline may hold part of the stages: free it.
 * Thread safety: any thread, before start.
 */
FLUXUS_API int32_t fluxus_pipeline_build(fluxus_pipeline *p, fluxus_registry *r,
                                         const char *spec);
#endif /* FLUXUS_EXPERIMENTAL */

/* ---------------------------------------------------------------------------------------------
 * Pipeline: running
 * ------------------------------------------------------------------------------------------- */

/**
 * Validate the pipeline and start it (and its runtime, if not started).
 * @return FLUXUS_OK, FLUXUS_EINVAL (no source, no sink, dead-letter policy without a dead-letter
 *         callback, a multi-worker sink that is not per-key; the message says which),
 *         FLUXUS_ESTATE (already started, or runtime freed), FLUXUS_ENOMEM.
 */
FLUXUS_API int32_t fluxus_pipeline_start(fluxus_pipeline *p);

/**
 * Wait until the pipeline finishes (source ended and every item ended) or `timeout_ms` passes
 * (UINT32_MAX = forever). In host-driven mode the calling thread runs the work while it waits.
 * When it returns FLUXUS_EFAILED or FLUXUS_ESOURCE, fluxus_last_error_message() names the
 * failure that stopped the pipeline, as one line: "pipeline 'P' ended with FLUXUS_EFAILED:
 * stage 'S' (index I): map callback failed: <the callback's text> (status N, A attempts,
 * retries exhausted)"; fluxus_pipeline_get_failure() gives the same details field by field.
 * @return FLUXUS_OK (finished, all well), FLUXUS_ETIMEDOUT (still running), FLUXUS_ECANCELED
 *         (finished by cancel or drain deadline), FLUXUS_EFAILED (stopped by a fail-fast error or
 *         worker init failure), FLUXUS_ESOURCE (stopped by a source error), FLUXUS_EINVAL,
 *         FLUXUS_ESTATE (not started), FLUXUS_EINCALLBACK.
 * Thread safety: any thread except fluxus callbacks; several threads may wait at once.
 */
FLUXUS_API int32_t fluxus_pipeline_wait(fluxus_pipeline *p, uint32_t timeout_ms);

/**
 * Drain: stop taking input (close a push source, stop calling a pull source), let admitted items
 * finish, and wait up to `timeout_ms`. Past the deadline the rest is cancelled; each stage's
 * `held_at_deadline` stat then says how many items it still held, and the last-error message
 * names those stages.
 * @return FLUXUS_OK (all finished in time), FLUXUS_ETIMEDOUT (deadline passed; rest cancelled),
 *         or what fluxus_pipeline_wait() returns for a pipeline that had already stopped.
 * Thread safety: as fluxus_pipeline_wait().
 */
FLUXUS_API int32_t fluxus_pipeline_drain(fluxus_pipeline *p, uint32_t timeout_ms);

/**
 * The failure that stopped the pipeline: the first item failure at a stage with
 * FLUXUS_ERROR_FAIL_FAST, a source error, or a worker init hook that failed. Only that first
 * one is kept (what fails during the cancel that follows is not). It is recorded as it
 * happens, so it can be read while the pipeline is still stopping, and it never changes once
 * set. The source's failure has the source's name and stage index UINT32_MAX (for a stage added
 * with fluxus_pipeline_add_source(), its own index); a worker init failure has its stage, the
 * hook's status and attempts 1.
 * @param[out] out  Receives the failure (read it with the fluxus_failure_* accessors): borrowed
 *                  from the pipeline, valid until fluxus_pipeline_free(). Set to NULL when there
 *                  is none.
 * @return FLUXUS_OK, FLUXUS_ENOTFOUND (no failure stopped the pipeline: it is running, finished
 *         well, or was cancelled or drained), FLUXUS_EINVAL (bad handle, or out is NULL).
 * Thread safety: any thread, also from inside callbacks.
 */
FLUXUS_API int32_t fluxus_pipeline_get_failure(const fluxus_failure **out, fluxus_pipeline *p);

/**
 * Cancel: stop promptly. The source is no longer called, pushes fail with FLUXUS_ECANCELED, and
 * every admitted item not yet delivered is destroyed and counted as cancelled. No callback
 * starts for another item once this returns, and no sink call at all; callbacks already running
 * finish their own item (long ones may poll fluxus_pipeline_get_cancelled() and return
 * FLUXUS_ECANCELED, which ends their item as cancelled). See "Stopping" above the stage
 * functions. Does not wait; use fluxus_pipeline_wait(). Cancelling twice, or a finished
 * pipeline, is allowed.
 * Cancelling a pipeline that has not started finishes it at once (starting it then returns
 * FLUXUS_ESTATE).
 * @return FLUXUS_OK, FLUXUS_EINVAL.
 * Thread safety: any thread, also from inside callbacks.
 */
FLUXUS_API int32_t fluxus_pipeline_cancel(fluxus_pipeline *p);

/**
 * `*out` = 1 if the pipeline is being cancelled (or stopped on an error), else 0. Cheap; meant
 * for long-running callbacks, which then give up and return FLUXUS_ECANCELED (their item ends
 * as cancelled, not failed). It does not clear the last error message.
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle, `out` is NULL).
 * Thread safety: any thread, also from inside callbacks.
 */
FLUXUS_API int32_t fluxus_pipeline_get_cancelled(int32_t *out, fluxus_pipeline *p);

/* Pipeline states. */
#define FLUXUS_STATE_BUILDING 0
#define FLUXUS_STATE_RUNNING 1
#define FLUXUS_STATE_DRAINING 2
#define FLUXUS_STATE_CANCELLING 3
#define FLUXUS_STATE_FINISHED 4

/** Read the pipeline's state (FLUXUS_STATE_*). @return FLUXUS_OK, FLUXUS_EINVAL. */
FLUXUS_API int32_t fluxus_pipeline_get_state(int32_t *out, fluxus_pipeline *p);

/**
 * Free a pipeline. A running pipeline is cancelled and finished first (this waits for callbacks
 * in progress). The user_free of every callback is called. NULL is accepted. Calls on the
 * pipeline that other threads are making meanwhile end first; a wait, drain or blocking push
 * among them returns FLUXUS_ECANCELED (see "Handles and frees" at the top).
 * @return FLUXUS_OK, FLUXUS_EINVAL (not a live pipeline), FLUXUS_EINCALLBACK (called from inside
 *         a fluxus callback or another fluxus call: nothing was freed).
 * Thread safety: any thread except fluxus callbacks; the handle is invalid afterwards.
 */
FLUXUS_API int32_t fluxus_pipeline_free(fluxus_pipeline *p);

/**
 * Index of the worker of the stage whose callback is running on this thread (0..workers-1).
 * Lets callbacks keep per-worker state.
 * @return FLUXUS_OK, FLUXUS_EINVAL (`out` is NULL), FLUXUS_ESTATE (not inside a stage callback).
 * Thread safety: any thread.
 */
FLUXUS_API int32_t fluxus_call_get_worker(uint32_t *out);

/*
 * The current call: functions a callback calls about the call it is in. They act on the
 * calling thread's current call, so they need no handle; each is valid only inside the
 * callbacks it names (elsewhere it returns FLUXUS_ESTATE). fluxus calls a callback on the
 * thread that then runs it, so a callback written in Go (a cgo export) may call them directly,
 * but not from another goroutine it started.
 */

/** Longest text a callback can attach to a failure, in bytes, not counting the final NUL. */
#define FLUXUS_ERROR_TEXT_MAX 1024

/**
 * Attach a text to the failure the running callback is about to report ("HTTP 503 from
 * api.example"), then return the failure status as usual. fluxus copies the text and shows it
 * wherever the failure goes: fluxus_failure_get_message() in the dead-letter and route-observer
 * callbacks and in fluxus_pipeline_get_failure(), the log callback's messages, and
 * fluxus_last_error_message() after fluxus_pipeline_wait() or _drain() returned FLUXUS_EFAILED
 * or FLUXUS_ESOURCE. Nothing is stored unless this is called.
 * Valid inside the callbacks fluxus calls for a stage or a source on the thread running the
 * pipeline's work: map, filter, flat map, sink and their batch forms, async map (its start
 * call; a completion carries its text with fluxus_pipeline_fail_async()), batch, reduce, window and join
 * callbacks, a join's input callback, router selectors, loader load and attach callbacks, pull
 * and cursor sources, and worker init hooks. (The items of a sliding window fail when they leave
 * their last window, later: they keep the status, not the text.) In the dead-letter,
 * route-observer and log callbacks, in timer callbacks and on host threads it returns
 * FLUXUS_ESTATE; in the other callbacks that run on those threads (item destructor, key and
 * copy callbacks, retry predicate) it is not supported.
 * A per-item callback's text goes with its next failure. A batch callback's text goes with
 * every item the call fails (its nonzero return, or status[i] without a text of its own: see
 * fluxus_call_set_item_error()). A callback that also throws an exception reports
 * FLUXUS_EEXCEPTION with this text. If a per-item callback returns success after all, its text
 * is dropped when the worker finishes the items it is running (a batch, or the few batches a
 * pull source fused down to its sink reads in one pass), and until then may be given to a
 * later failure among them that attaches none: set it on the way out with a failure, or drop it
 * with NULL. (A batch call's texts are dropped as soon as its items are settled.) Calling it
 * again replaces the text.
 * @param message  NUL-terminated UTF-8, copied; longer than FLUXUS_ERROR_TEXT_MAX bytes, it is
 *                 cut to at most that many (never inside a UTF-8 sequence). NULL or "" drops the
 *                 text attached so far.
 * @return FLUXUS_OK, FLUXUS_ESTATE (not inside such a callback on this thread; nothing is
 *         stored), FLUXUS_ENOMEM (the copy failed; the failure itself is still reported).
 * Thread safety: only on the thread running the callback, during the call.
 */
FLUXUS_API int32_t fluxus_call_set_error(const char *message);

/**
 * Attach a text to the failure of item `index` of a batch callback with per-item statuses (batch
 * map, batch filter, batch sink: the item in[index] whose status[index] the call sets nonzero;
 * a loader's load callback: every item waiting for key `index`). It goes with that item's
 * failure, whether status[index] or the call's nonzero return fails it; items without a text of
 * their own get the call's (fluxus_call_set_error()). The rules of fluxus_call_set_error()
 * apply otherwise.
 * @param index    0 .. count - 1 of the running call.
 * @param message  As for fluxus_call_set_error(); NULL or "" drops that item's text.
 * @return FLUXUS_OK, FLUXUS_ESTATE (not inside such a batch callback on this thread),
 *         FLUXUS_ERANGE (index >= the call's count), FLUXUS_ENOMEM.
 * Thread safety: only on the thread running the callback, during the call.
 */
FLUXUS_API int32_t fluxus_call_set_item_error(uint32_t index, const char *message);

/* ---------------------------------------------------------------------------------------------
 * Flow control: rate limiters and concurrency limiters
 * ------------------------------------------------------------------------------------------- */

/*
 * A rate limiter is a token bucket: it holds up to `burst` tokens and gains `rate_per_s` tokens
 * per second; each unit of work takes one token. A new limiter starts full (`burst` tokens).
 * Two modes:
 *  - FLUXUS_RATE_TOKEN_BUCKET (the default) lets bursts of up to `burst` pass at once after a
 *    quiet spell, and `rate_per_s` on average.
 *  - FLUXUS_RATE_SMOOTH spaces units evenly, 1/rate apart, whatever `burst` is (a leaky bucket
 *    used as a meter: burst 1).
 * Catch-up allowance: the bucket can hold, beyond the burst (1 in smooth mode), 1 ms worth of
 * tokens (rate x 1 ms). Work that waits for tokens is woken by timers, a few tens of
 * microseconds late; the allowance keeps that lateness from lowering the long-run rate, which
 * stays within a fraction of a percent of `rate_per_s` from 1/s to millions per second, while
 * waiters sleep rather than spin. So spacing is exact to about a millisecond: at high rates work
 * passes in small groups per wake-up while the average holds, and after a quiet spell up to
 * burst + rate x 1 ms tokens are available at once. Counting is exact for integral rates (with
 * rate 10 and burst 1, the token after the first is available at exactly +100 ms).
 * Changing the rate, burst or mode takes effect for the next tokens: the bucket keeps what it
 * holds (capped at the new capacity), with no retroactive refill or penalty. Rate 0 stops the
 * limiter: nothing passes, not even tokens left in the bucket, which are kept for when the rate
 * is raised again.
 * A limiter created on a runtime follows that runtime's clock; with a virtual clock (see
 * fluxus_runtime_set_virtual_clock(); enable it before creating the limiter), every refill and
 * the timeout of fluxus_rate_limiter_acquire() follow the virtual clock, unlike the real-time
 * timeouts of other blocking calls.
 *
 * A concurrency limiter is a counting semaphore of permits: at most `max_permits` are held at
 * once. Host threads take and give them back with acquire/release; pipeline stages that use
 * the limiter take and give back permits as they work, sharing the same count.
 *
 * Both are shared objects: stages that use a limiter keep it alive, so the handle may be freed
 * while they run. Waiters are not served in FIFO order: whoever asks first after tokens or
 * permits appear gets them, so a waiter for many at once may wait longer than one for a few.
 */

typedef struct fluxus_rate_limiter fluxus_rate_limiter;

/* Rate limiter modes. */
#define FLUXUS_RATE_TOKEN_BUCKET 0 /* bursts of up to `burst`, then `rate_per_s` (default) */
#define FLUXUS_RATE_SMOOTH 1       /* evenly spaced, 1/rate apart (burst treated as 1) */

/**
 * Create a rate limiter, full (holding `burst` tokens), in FLUXUS_RATE_TOKEN_BUCKET mode.
 * @param[out] out   Receives the limiter; the caller owns it and releases it with
 *                   fluxus_rate_limiter_free(). Set to NULL on failure.
 * @param rt         The runtime whose clock (real or virtual) the limiter follows, or NULL for
 *                   the real monotonic clock. Borrowed: the limiter keeps the runtime's memory
 *                   alive (not its threads), so it may outlive the runtime handle.
 * @param rate_per_s Tokens per second, 0..1e9; 0 lets nothing pass until the rate is raised.
 * @param burst      Bucket size in tokens, 1..(1 << 30).
 * @return FLUXUS_OK, FLUXUS_EINVAL (out NULL, or rt not NULL and not a live runtime),
 *         FLUXUS_ERANGE (rate negative, NaN, infinite or above 1e9; burst 0 or above 1 << 30),
 *         FLUXUS_ENOMEM.
 * Thread safety: any thread.
 */
FLUXUS_API int32_t fluxus_rate_limiter_new(fluxus_rate_limiter **out, fluxus_runtime *rt,
                                           double rate_per_s, uint32_t burst);

/**
 * Change the rate, at any time. Tokens already in the bucket stay (capped at the new capacity,
 * burst + 1 ms worth); new ones accrue at the new rate from now on. Waiters re-evaluate at once.
 * @param rate_per_s Tokens per second, 0..1e9 (0 stops the limiter).
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle), FLUXUS_ERANGE (negative, NaN, infinite or above
 *         1e9; the rate is unchanged).
 * Thread safety: any thread, also from inside callbacks.
 */
FLUXUS_API int32_t fluxus_rate_limiter_set_rate(fluxus_rate_limiter *l, double rate_per_s);

/**
 * Change the burst (bucket size in tokens), at any time. Raising it adds no tokens; lowering it
 * drops the tokens above the new capacity. Waiters re-evaluate at once.
 * @param burst 1..(1 << 30). Ignored by FLUXUS_RATE_SMOOTH mode until the mode changes back.
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle), FLUXUS_ERANGE (0 or above 1 << 30).
 * Thread safety: any thread, also from inside callbacks.
 */
FLUXUS_API int32_t fluxus_rate_limiter_set_burst(fluxus_rate_limiter *l, uint32_t burst);

/**
 * Choose FLUXUS_RATE_TOKEN_BUCKET or FLUXUS_RATE_SMOOTH, at any time. Switching to smooth mode
 * drops the tokens above its capacity (1 plus 1 ms worth). Waiters re-evaluate at once.
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle), FLUXUS_ERANGE (unknown mode).
 * Thread safety: any thread, also from inside callbacks.
 */
FLUXUS_API int32_t fluxus_rate_limiter_set_mode(fluxus_rate_limiter *l, int32_t mode);

/**
 * Take `n` tokens if they are all available now, without waiting. Takes all or nothing.
 * @param n Tokens to take; 0 is a no-op that returns FLUXUS_OK.
 * @return FLUXUS_OK (taken), FLUXUS_ELIMITED (fewer than `n` available, or the rate is 0;
 *         nothing taken), FLUXUS_EINVAL (bad handle), FLUXUS_ERANGE (n exceeds the capacity,
 *         burst (1 in smooth mode) plus 1 ms worth, so it could never succeed).
 * Thread safety: any thread, also from inside callbacks.
 */
FLUXUS_API int32_t fluxus_rate_limiter_try_acquire(fluxus_rate_limiter *l, uint32_t n);

/**
 * Take `n` tokens, waiting until they are available or `timeout_ms` passes. The thread sleeps
 * (it does not spin) until the tokens are due, and wakes early when the rate, burst or mode
 * changes. With a virtual clock the timeout is measured on that clock, so the call returns only
 * once the host has advanced the clock far enough (the thread then checks it every
 * millisecond of real time).
 * @param n          Tokens to take together; 0 is a no-op that returns FLUXUS_OK.
 * @param timeout_ms How long to wait: 0 = do not wait, UINT32_MAX = forever.
 * @return FLUXUS_OK (taken), FLUXUS_ETIMEDOUT (not available in time; nothing taken),
 *         FLUXUS_EINVAL (bad handle), FLUXUS_ERANGE (n exceeds the capacity, burst (1 in smooth
 *         mode) plus 1 ms worth, including when a setter lowers it during the wait),
 *         FLUXUS_ECANCELED (the handle was freed by another thread during the wait),
 *         FLUXUS_EINCALLBACK (called from inside a fluxus callback with timeout_ms != 0, even
 *         if tokens are available: it could block the thread that advances the clock or runs
 *         the work).
 * Thread safety: any thread except fluxus callbacks (there, use timeout 0 or try-acquire);
 *                several threads may wait at once.
 */
FLUXUS_API int32_t fluxus_rate_limiter_acquire(fluxus_rate_limiter *l, uint32_t n,
                                               uint32_t timeout_ms);

/**
 * Free the handle. Threads waiting in fluxus_rate_limiter_acquire() return FLUXUS_ECANCELED.
 * Pipeline stages that use the limiter keep it alive and keep being limited until they are
 * freed. NULL is accepted and ignored.
 * @return FLUXUS_OK, FLUXUS_EINVAL (not a live rate limiter handle, e.g. already freed).
 * Thread safety: any thread, also from inside callbacks; the handle is invalid afterwards.
 */
FLUXUS_API int32_t fluxus_rate_limiter_free(fluxus_rate_limiter *l);

typedef struct fluxus_concurrency_limiter fluxus_concurrency_limiter;

/**
 * Create a concurrency limiter with `max_permits` permits, none in use.
 * @param[out] out    Receives the limiter; the caller owns it and releases it with
 *                    fluxus_concurrency_limiter_free(). Set to NULL on failure.
 * @param max_permits 1..(1 << 30).
 * @return FLUXUS_OK, FLUXUS_EINVAL (out NULL), FLUXUS_ERANGE (0 or above 1 << 30),
 *         FLUXUS_ENOMEM.
 * Thread safety: any thread.
 */
FLUXUS_API int32_t fluxus_concurrency_limiter_new(fluxus_concurrency_limiter **out,
                                                  uint32_t max_permits);

/**
 * Change the maximum, at any time. Raising it lets waiters proceed at once. Lowering it never
 * revokes permits already held: new permits are granted again once fewer than the new maximum
 * are in use.
 * @param max_permits 1..(1 << 30).
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle), FLUXUS_ERANGE (0 or above 1 << 30).
 * Thread safety: any thread, also from inside callbacks.
 */
FLUXUS_API int32_t fluxus_concurrency_limiter_set_max(fluxus_concurrency_limiter *l,
                                                      uint32_t max_permits);

/**
 * Take `n` permits if they are all free now, without waiting. Takes all or nothing. The caller
 * gives them back with fluxus_concurrency_limiter_release().
 * @param n Permits to take; 0 is a no-op that returns FLUXUS_OK.
 * @return FLUXUS_OK (taken), FLUXUS_ELIMITED (fewer than `n` free; nothing taken),
 *         FLUXUS_EINVAL (bad handle), FLUXUS_ERANGE (n above the maximum: it could never
 *         succeed).
 * Thread safety: any thread, also from inside callbacks.
 */
FLUXUS_API int32_t fluxus_concurrency_limiter_try_acquire(fluxus_concurrency_limiter *l,
                                                          uint32_t n);

/**
 * Take `n` permits together, waiting until they are free or `timeout_ms` passes (real time,
 * whatever clock a runtime uses). The thread sleeps until a release or set_max wakes it.
 * @param n          Permits to take; 0 is a no-op that returns FLUXUS_OK.
 * @param timeout_ms How long to wait: 0 = do not wait, UINT32_MAX = forever.
 * @return FLUXUS_OK (taken), FLUXUS_ETIMEDOUT (not free in time; nothing taken),
 *         FLUXUS_EINVAL (bad handle), FLUXUS_ERANGE (n above the maximum, including when
 *         set_max lowers it during the wait), FLUXUS_ECANCELED (the handle was freed by another
 *         thread during the wait), FLUXUS_EINCALLBACK (called from inside a fluxus callback
 *         with timeout_ms != 0).
 * Thread safety: any thread except fluxus callbacks (there, use timeout 0 or try-acquire);
 *                several threads may wait at once.
 */
FLUXUS_API int32_t fluxus_concurrency_limiter_acquire(fluxus_concurrency_limiter *l, uint32_t n,
                                                      uint32_t timeout_ms);

/**
 * Give back `n` permits taken with acquire or try-acquire. Any thread may release permits
 * another thread took.
 * @param n Permits to give back; 0 is a no-op that returns FLUXUS_OK.
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle), FLUXUS_ERANGE (n is more than are in use;
 *         nothing is released).
 * Thread safety: any thread, also from inside callbacks.
 */
FLUXUS_API int32_t fluxus_concurrency_limiter_release(fluxus_concurrency_limiter *l, uint32_t n);

/**
 * Read how many permits are in use now (held by host threads and by stages together).
 * @param[out] out Receives the count; may be above the maximum right after set_max lowered it.
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle, or out NULL).
 * Thread safety: any thread, also from inside callbacks.
 */
FLUXUS_API int32_t fluxus_concurrency_limiter_get_in_use(uint32_t *out,
                                                     fluxus_concurrency_limiter *l);

/**
 * Free the handle. Threads waiting in fluxus_concurrency_limiter_acquire() return
 * FLUXUS_ECANCELED; permits still held are simply forgotten. Pipeline stages that use the
 * limiter keep it alive until they are freed. NULL is accepted and ignored.
 * @return FLUXUS_OK, FLUXUS_EINVAL (not a live concurrency limiter handle, e.g. already freed).
 * Thread safety: any thread, also from inside callbacks; the handle is invalid afterwards.
 */
FLUXUS_API int32_t fluxus_concurrency_limiter_free(fluxus_concurrency_limiter *l);

/* ----- Circuit breakers ----- */

typedef struct fluxus_circuit_breaker fluxus_circuit_breaker;

/* Circuit breaker states. */
#define FLUXUS_BREAKER_CLOSED 0    /* calls pass; outcomes are counted */
#define FLUXUS_BREAKER_OPEN 1      /* calls are refused until the reset timeout has passed */
#define FLUXUS_BREAKER_HALF_OPEN 2 /* a few trial calls pass; enough successes close it, one
                                      failure opens it again */

/** State-change callback: `from` and `to` are FLUXUS_BREAKER_* states. Must not block. */
typedef void (*fluxus_breaker_state_fn)(void *user, int32_t from, int32_t to);

/**
 * Create a circuit breaker, closed, that opens after 5 consecutive failures, stays open for
 * 1 s, then lets 1 trial call through and closes after 1 success. It reads the clock of `rt`
 * (NULL: the real clock), so on a virtual clock its timing is exact. It can be shared by stages
 * of several pipelines (fluxus_stage_set_circuit_breaker()) and used on its own
 * (fluxus_circuit_breaker_allow() / _record()). Outcomes count for the state they were allowed
 * in: a slow call that started before the breaker opened cannot close or reopen it.
 * @param[out] out  Receives the breaker; release it with fluxus_circuit_breaker_free().
 * @return FLUXUS_OK, FLUXUS_EINVAL (out NULL, bad runtime handle), FLUXUS_ENOMEM.
 * Thread safety: every fluxus_circuit_breaker_* function may be called from any thread, also
 * from callbacks; none blocks.
 */
FLUXUS_API int32_t fluxus_circuit_breaker_new(fluxus_circuit_breaker **out, fluxus_runtime *rt);

/**
 * Open after `n` consecutive failures while closed (0 turns this trigger off; default 5).
 * @return FLUXUS_OK, FLUXUS_EINVAL.
 */
FLUXUS_API int32_t fluxus_circuit_breaker_set_consecutive_failures(fluxus_circuit_breaker *cb,
                                                                   uint32_t n);

/**
 * Open when, among the last `window` calls while closed (and at least `min_calls` of them),
 * the share of failures is at least `ratio` (0 < ratio <= 1; ratio 0 turns this trigger off,
 * the default). Both triggers may be on at once.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ERANGE (ratio not in 0..1, window 0 or above 65536
 *         with ratio > 0, min_calls > window).
 */
FLUXUS_API int32_t fluxus_circuit_breaker_set_failure_ratio(fluxus_circuit_breaker *cb,
                                                            double ratio, uint32_t window,
                                                            uint32_t min_calls);

/**
 * How long the breaker stays open before it lets trial calls through (default 1 s; at most one
 * day). @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ERANGE.
 */
FLUXUS_API int32_t fluxus_circuit_breaker_set_reset_timeout_us(fluxus_circuit_breaker *cb,
                                                               uint64_t timeout_us);

/**
 * Half-open behaviour: at most `max_trial_calls` trial calls in progress at once, and
 * `success_threshold` successful trials to close (defaults 1 and 1; each at least 1).
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ERANGE.
 */
FLUXUS_API int32_t fluxus_circuit_breaker_set_half_open(fluxus_circuit_breaker *cb,
                                                        uint32_t max_trial_calls,
                                                        uint32_t success_threshold);

/**
 * Install the state-change callback, replacing any previous one (whose user_free runs when no
 * call of it is in progress: at once, or, when replaced from inside its own call, after that
 * call returns). `fn` NULL removes the callback (`user` is kept until replaced or freed).
 * Changes are reported in the order they happened, one at a time (callbacks of one breaker
 * never overlap), on a thread that was using the breaker when or after the change happened,
 * with no fluxus lock held except the breaker's own callback lock. The callback may call this
 * breaker's functions (a change they cause is reported after the callback returns).
 * @return FLUXUS_OK, FLUXUS_EINVAL.
 */
FLUXUS_API int32_t fluxus_circuit_breaker_set_state_callback(fluxus_circuit_breaker *cb,
                                                             fluxus_breaker_state_fn fn,
                                                             void *user,
                                                             fluxus_user_free_fn user_free);

/** Read the state (FLUXUS_BREAKER_*). @return FLUXUS_OK, FLUXUS_EINVAL. */
FLUXUS_API int32_t fluxus_circuit_breaker_get_state(int32_t *out, fluxus_circuit_breaker *cb);

/**
 * Standalone use: may a call start now? On FLUXUS_OK, *out_ticket identifies the state it was
 * allowed in; report the call's outcome with fluxus_circuit_breaker_record().
 * @return FLUXUS_OK, FLUXUS_ECIRCUITOPEN (open, or half-open with every trial slot in use),
 *         FLUXUS_EINVAL.
 */
FLUXUS_API int32_t fluxus_circuit_breaker_allow(uint64_t *out_ticket, fluxus_circuit_breaker *cb);

/**
 * Standalone use: the outcome of a call allowed with `ticket` (success 1 or 0).
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ERANGE (success not 0/1).
 */
FLUXUS_API int32_t fluxus_circuit_breaker_record(fluxus_circuit_breaker *cb, uint64_t ticket,
                                                 int32_t success);

/**
 * Release the handle; stages using the breaker keep it alive. NULL is accepted. Calls on the
 * handle that other threads are making meanwhile end first.
 * @return FLUXUS_OK, FLUXUS_EINVAL (not a live breaker, e.g. already freed),
 *         FLUXUS_EINCALLBACK (called from inside a fluxus callback, such as the breaker's own
 *         state callback, or another fluxus call: nothing was freed).
 * Thread safety: any thread except fluxus callbacks; the handle is invalid afterwards.
 */
FLUXUS_API int32_t fluxus_circuit_breaker_free(fluxus_circuit_breaker *cb);

/* What a stage does with items while its breaker refuses calls. */
#define FLUXUS_BREAKER_FAIL 0 /* they fail at once with FLUXUS_ECIRCUITOPEN (error policy) */
#define FLUXUS_BREAKER_WAIT 1 /* they wait (in the stage's queue, backpressure) until calls
                                 are allowed again */

/**
 * Guard a stage with a breaker: before each callback call the breaker is asked, and the call's
 * outcome is recorded (a nonzero return, an exception, an async error completion or timeout
 * is a failure; FLUXUS_ECANCELED counts neither way and frees a half-open trial slot). A guarded stage heads its own task and runs its items one call at a time.
 * @param cb         The breaker (retained until replaced or the pipeline is freed), or NULL
 *                   to remove it. It must use the pipeline runtime's clock.
 * @param when_open  FLUXUS_BREAKER_FAIL or FLUXUS_BREAKER_WAIT.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ENOTFOUND, FLUXUS_ERANGE, FLUXUS_ESTATE (after
 *         start).
 */
FLUXUS_API int32_t fluxus_stage_set_circuit_breaker(fluxus_pipeline *p, uint32_t stage,
                                                    fluxus_circuit_breaker *cb,
                                                    int32_t when_open);

/**
 * Pause the source automatically when `failures` items fail at this stage (after their
 * retries, whatever the error policy) within `window_us`, for `pause_us`; then it resumes by
 * itself. Meanwhile a pull source is not called and pushes wait (try-push says FLUXUS_EFULL);
 * items already admitted keep flowing. Each pause is logged (FLUXUS_LOG_WARN) and counted in
 * the pipeline's `source_pauses`. `failures` 0 turns it off.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ENOTFOUND, FLUXUS_ERANGE (window or pause 0 or above
 *         one day), FLUXUS_ESTATE (after start).
 */
FLUXUS_API int32_t fluxus_stage_set_pause_source_on_errors(fluxus_pipeline *p, uint32_t stage,
                                                           uint32_t failures, uint64_t window_us,
                                                           uint64_t pause_us);

/**
 * Hold the source while `cb` is open (NULL removes it): instead of pouring items into a failing
 * stage, the source waits until the breaker lets trial calls through. Usually the same breaker
 * guards the failing stage. It must use the pipeline runtime's clock.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ESTATE (after start).
 */
FLUXUS_API int32_t fluxus_pipeline_set_source_breaker(fluxus_pipeline *p,
                                                      fluxus_circuit_breaker *cb);

/* ----- Limiters on stages and sources ----- */

/**
 * Rate limit a stage: each item takes one token from `l` when the stage takes it from its
 * queue, and waits for one if there is none; the waiting costs no thread (a timer on the loop,
 * woken early when the limiter's rate or burst changes). Waiting items stay in order; items
 * still in the stage's queue are not yet waiting, and the queue's backpressure slows the
 * producer. One limiter may be shared by stages of several pipelines, and changed at any time
 * with fluxus_rate_limiter_set_rate() / _set_burst() / _set_mode().
 * @param l                The limiter (retained until replaced or the pipeline is freed; the
 *                         handle may be freed at once), or NULL to remove the stage's limiter.
 *                         It must use the pipeline runtime's clock (create it on that runtime).
 * @param wait_timeout_ms  UINT32_MAX: wait as long as it takes. Otherwise an item whose token
 *                         cannot come within this many milliseconds of when the stage took it
 *                         (at the limiter's rate at the time) fails at once with
 *                         FLUXUS_ELIMITED and follows the stage's error policy, as a
 *                         deadline-aware wait would.
 * A rate-limited stage heads its own task (it is not fused with the stage before it). With
 * several workers it must be unordered or per-key (checked at start).
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad pipeline or limiter handle), FLUXUS_ENOTFOUND,
 *         FLUXUS_ESTATE (after start).
 * Thread safety: any thread, before start.
 */
FLUXUS_API int32_t fluxus_stage_set_rate_limiter(fluxus_pipeline *p, uint32_t stage,
                                                 fluxus_rate_limiter *l,
                                                 uint32_t wait_timeout_ms);

/**
 * Rate limit a pull source: it is called for at most as many items as there are tokens (a
 * batch pull source gets a capacity of the tokens granted; unused tokens are given back). The
 * source simply waits, nothing fails. Push sources are refused at start: acquire from the
 * limiter before pushing, or rate limit the first stage.
 * @param l  As for fluxus_stage_set_rate_limiter(); NULL removes it.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ESTATE (after start).
 */
FLUXUS_API int32_t fluxus_pipeline_set_source_rate_limiter(fluxus_pipeline *p,
                                                           fluxus_rate_limiter *l);

/**
 * Bound a stage's concurrency by a limiter that several stages and pipelines may share (one
 * limit for all calls to the same upstream service). A synchronous stage holds one permit per
 * worker while it runs callbacks; an async stage holds one permit per item from its start until
 * it has gone on (or failed, timed out, been cancelled). Without a permit the stage waits
 * without a thread and is woken when one is released. fluxus_concurrency_limiter_set_max()
 * applies at run time.
 * @param l  The limiter (retained as above), or NULL to remove it.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ENOTFOUND, FLUXUS_ESTATE (after start).
 * Thread safety: any thread, before start.
 */
FLUXUS_API int32_t fluxus_stage_set_concurrency_limiter(fluxus_pipeline *p, uint32_t stage,
                                                        fluxus_concurrency_limiter *l);

/* ---------------------------------------------------------------------------------------------
 * Stats
 * ------------------------------------------------------------------------------------------- */

/**
 * Pipeline totals. Set struct_size = sizeof(fluxus_pipeline_stats) before the call; fields past
 * the caller's struct_size are not written, so old programs keep working with new libraries.
 * Once the pipeline has finished,
 *   admitted == delivered + filtered + dead_lettered + failed + cancelled
 * and `in_flight` is 0; `balanced` is 1 when that equation holds at the moment of reading.
 */
typedef struct fluxus_pipeline_stats {
    uint32_t struct_size;
    int32_t state;          /* FLUXUS_STATE_* */
    uint64_t admitted;      /* items from the source, plus items emitted by flat-map stages */
    uint64_t delivered;     /* items the sink accepted */
    uint64_t filtered;      /* dropped by filters and dedup; flat-map inputs */
    uint64_t failed;        /* failed (skip/fail-fast policy), including overflow drops */
    uint64_t dead_lettered; /* handed to the dead-letter callback */
    uint64_t cancelled;     /* destroyed by cancel or drain deadline */
    uint64_t in_flight;     /* admitted and not yet ended */
    uint64_t dropped;       /* subset of failed: dropped by overflow policies */
    int32_t balanced;       /* 1 when the conservation equation holds now */
    int32_t result;         /* what fluxus_pipeline_wait() returns once finished, else 0 */
    uint64_t source_pauses; /* automatic pauses after failures (0.2) */
} fluxus_pipeline_stats;

/**
 * Read the pipeline totals at any moment (counters are updated per batch, or per pass: see
 * fluxus_pipeline_set_batch_size()).
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle, NULL out, struct_size < 8).
 */
FLUXUS_API int32_t fluxus_pipeline_get_stats(fluxus_pipeline_stats *out, fluxus_pipeline *p);

/** Per-stage counters; same struct_size rule. */
typedef struct fluxus_stage_stats {
    uint32_t struct_size;
    uint32_t workers;
    uint64_t in;              /* items that reached the stage (entered its queue) */
    uint64_t out;             /* items it passed on (for the sink: delivered) */
    uint64_t filtered;
    uint64_t failed;
    uint64_t dead_lettered;
    uint64_t cancelled;
    uint64_t dropped;         /* overflow-policy drops (also counted in failed) */
    uint64_t queue_depth;     /* items in its input queue now */
    uint64_t queue_peak;      /* highest queue depth seen */
    uint64_t queue_capacity;  /* total capacity of its input queue (0 if fused: no queue) */
    uint64_t busy_ns;         /* time spent in its callbacks, summed over workers (sampled:
                                 one batch in 64 is timed and counted 64 times) */
    uint64_t held_at_deadline;/* items it held when a drain deadline passed */
    uint64_t dedup_keys;      /* dedup: keys currently remembered */
    uint64_t dedup_forgotten; /* dedup: keys forgotten by the bounded mode */
    uint64_t in_flight;       /* async: items started and not yet gone on (0.2) */
    uint64_t timed_out;       /* items failed by the stage timeout, or (sinks, flat maps)
                                 callbacks that overran it (0.2) */
    uint64_t late;            /* async: completions that arrived after their timeout (0.2) */
    uint64_t retries;         /* retry attempts scheduled (0.2) */
    uint64_t retry_waiting;   /* items waiting for their retry now (0.2) */
    uint64_t spawned;         /* new items it made: flat-map outputs, broadcast copies (0.3) */
    uint64_t routed;          /* failed items sent down its error branch (0.3); at every stage
                                 in + spawned == out + filtered + failed + dead_lettered +
                                 cancelled + routed once the pipeline has finished */
    uint64_t cache_hits;      /* keys its cache answered (0.3) */
    uint64_t cache_misses;    /* keys it had to compute or load (0.3) */
} fluxus_stage_stats;

/**
 * Read one stage's counters.
 * @return FLUXUS_OK, FLUXUS_EINVAL, FLUXUS_ENOTFOUND.
 */
FLUXUS_API int32_t fluxus_stage_get_stats(fluxus_stage_stats *out, fluxus_pipeline *p,
                                          uint32_t stage);

/** Number of stages added so far. @return FLUXUS_OK, FLUXUS_EINVAL. */
FLUXUS_API int32_t fluxus_pipeline_get_stage_count(uint32_t *out, fluxus_pipeline *p);

/**
 * Name of a stage: `*out` is a string owned by the pipeline, valid until it is freed.
 * @return FLUXUS_OK, FLUXUS_EINVAL (bad handle, `out` is NULL), FLUXUS_ENOTFOUND (no such stage).
 */
FLUXUS_API int32_t fluxus_stage_get_name(const char **out, fluxus_pipeline *p, uint32_t stage);

#ifdef __cplusplus
}
#endif

#endif /* FLUXUS_H */
