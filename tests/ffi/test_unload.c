/*
 * test_unload.c — a host that loads fluxus, uses it and unloads it, many times over (a plugin
 * host, a test runner, a language runtime that reloads native modules). The program is not linked
 * with libfluxus: each cycle dlopen()s the built library (path in argv[1]), runs a small pipeline
 * on worker threads, makes a call fail on a worker thread and on the main thread and reads the
 * message (borrowed and copied), frees everything and dlclose()s the library.
 *
 * Once every runtime is freed no thread fluxus started may be left, and after every dlclose() the
 * library must be gone from /proc/self/maps: anything that pins it (a thread-local with a
 * destructor, a STB_GNU_UNIQUE symbol, a thread still running, a NODELETE flag) fails the test
 * in cycle 1.
 *
 * Usage: test_unload path/to/libfluxus.so [cycles]   (1000 cycles by default)
 */
#define _POSIX_C_SOURCE 200809L /* stat(), opendir(), nanosleep(), readlink() */
#include <fluxus.h>

#include <dirent.h>
#include <dlfcn.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#define ITEMS 200u
#define FAIL_EVERY 50u /* the map makes a fluxus call fail on every 50th item */

static int failures = 0;

#define EXPECT(cond)                                                                 \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                              \
        }                                                                            \
    } while (0)

/* The functions one cycle calls, resolved again after every dlopen(). */
static struct {
    const char *(*err_name)(int32_t);
    const char *(*last_error_message)(void);
    int32_t (*last_error_copy)(char *, size_t, size_t *);
    int32_t (*runtime_new)(fluxus_runtime **);
    int32_t (*runtime_set_workers)(fluxus_runtime *, uint32_t);
    int32_t (*runtime_free)(fluxus_runtime *);
    int32_t (*pipeline_new)(fluxus_pipeline **, fluxus_runtime *, const char *);
    int32_t (*pipeline_set_pull_source)(fluxus_pipeline *, const char *, fluxus_pull_fn, void *,
                                        fluxus_user_free_fn);
    int32_t (*pipeline_add_map)(uint32_t *, fluxus_pipeline *, const char *, fluxus_map_fn, void *,
                                fluxus_user_free_fn);
    int32_t (*pipeline_add_sink)(uint32_t *, fluxus_pipeline *, const char *, fluxus_sink_fn,
                                 void *, fluxus_user_free_fn);
    int32_t (*stage_set_workers)(fluxus_pipeline *, uint32_t, uint32_t);
    int32_t (*pipeline_start)(fluxus_pipeline *);
    int32_t (*pipeline_wait)(fluxus_pipeline *, uint32_t);
    int32_t (*pipeline_free)(fluxus_pipeline *);
} fn;

#define EXPECT_OK(call)                                                               \
    do {                                                                              \
        int32_t rc_ = (call);                                                         \
        if (rc_ != FLUXUS_OK) {                                                       \
            fprintf(stderr, "%s:%d: %s returned %s: %s\n", __FILE__, __LINE__, #call, \
                    fn.err_name(rc_), fn.last_error_message());                       \
            failures++;                                                               \
        }                                                                             \
    } while (0)

/* dlsym() returns void *; ISO C has no conversion to a function pointer, so copy the bits. */
static int resolve(void *lib, const char *name, void *slot, size_t size) {
    void *sym = dlsym(lib, name);
    if (sym == NULL) {
        fprintf(stderr, "dlsym(%s) failed: %s\n", name, dlerror());
        return 0;
    }
    memcpy(slot, &sym, size);
    return 1;
}

#define RESOLVE(field) ok &= resolve(lib, "fluxus_" #field, (void *)&fn.field, sizeof fn.field)

static int resolve_all(void *lib) {
    int ok = 1;
    RESOLVE(err_name);
    RESOLVE(last_error_message);
    RESOLVE(last_error_copy);
    RESOLVE(runtime_new);
    RESOLVE(runtime_set_workers);
    RESOLVE(runtime_free);
    RESOLVE(pipeline_new);
    RESOLVE(pipeline_set_pull_source);
    RESOLVE(pipeline_add_map);
    RESOLVE(pipeline_add_sink);
    RESOLVE(stage_set_workers);
    RESOLVE(pipeline_start);
    RESOLVE(pipeline_wait);
    RESOLVE(pipeline_free);
    return ok;
}

/* ----- the pipeline of one cycle ----- */

struct source {
    uint64_t next;
};

static int32_t pull_one(void *user, uint64_t *item) {
    struct source *s = user;
    if (s->next == ITEMS) {
        return FLUXUS_PULL_END;
    }
    *item = s->next++;
    return FLUXUS_PULL_ITEM;
}

/* Shared by the map's two worker threads: updated with atomics. */
struct map_state {
    uint32_t failed_calls;  /* fluxus calls made to fail on a worker thread */
    uint32_t good_messages; /* ... after which that thread read and copied its message */
};

static int32_t add_one(void *user, uint64_t in, uint64_t *out) {
    struct map_state *m = user;
    if (in % FAIL_EVERY == 0) {
        /* A call that fails on this worker thread records a message there. */
        if (fn.runtime_set_workers(NULL, 1) == FLUXUS_EINVAL) {
            const char *msg = fn.last_error_message();
            char copy[FLUXUS_ERROR_MESSAGE_MAX];
            size_t len = 0;
            __atomic_add_fetch(&m->failed_calls, 1, __ATOMIC_SEQ_CST);
            if (msg != NULL && strstr(msg, "runtime") != NULL &&
                fn.last_error_copy(copy, sizeof copy, &len) == FLUXUS_OK &&
                strcmp(copy, msg) == 0 && len == strlen(msg)) {
                __atomic_add_fetch(&m->good_messages, 1, __ATOMIC_SEQ_CST);
            }
        }
    }
    *out = in + 1;
    return 0;
}

struct sink {
    uint64_t count;
    uint64_t sum;
};

static int32_t sum_items(void *user, uint64_t item) {
    struct sink *s = user;
    s->count++;
    s->sum += item;
    return 0;
}

static void run_one_pipeline(void) {
    fluxus_runtime *rt = NULL;
    fluxus_pipeline *p = NULL;
    struct source src = {0};
    struct map_state m = {0, 0};
    struct sink s = {0, 0};
    uint32_t map = 0;

    EXPECT_OK(fn.runtime_new(&rt));
    EXPECT_OK(fn.runtime_set_workers(rt, 2));

    /* A call that fails on the main thread, and its message. */
    EXPECT(fn.runtime_set_workers(rt, 5000) == FLUXUS_ERANGE);
    EXPECT(strstr(fn.last_error_message(), "5000") != NULL);
    {
        char copy[8];
        size_t len = 0;
        EXPECT(fn.last_error_copy(copy, sizeof copy, &len) == FLUXUS_ERANGE);
        EXPECT(len == strlen(fn.last_error_message()) && strlen(copy) == sizeof copy - 1);
    }

    EXPECT_OK(fn.pipeline_new(&p, rt, "unload"));
    EXPECT_OK(fn.pipeline_set_pull_source(p, "count", pull_one, &src, NULL));
    EXPECT_OK(fn.pipeline_add_map(&map, p, "add-one", add_one, &m, NULL));
    EXPECT_OK(fn.stage_set_workers(p, map, 2));
    EXPECT_OK(fn.pipeline_add_sink(NULL, p, "sum", sum_items, &s, NULL));
    EXPECT_OK(fn.pipeline_start(p));
    EXPECT_OK(fn.pipeline_wait(p, UINT32_MAX));
    EXPECT_OK(fn.pipeline_free(p));
    EXPECT_OK(fn.runtime_free(rt));

    EXPECT(s.count == ITEMS);
    EXPECT(s.sum == (uint64_t)ITEMS * (ITEMS + 1) / 2);
    EXPECT(m.failed_calls == ITEMS / FAIL_EVERY);
    EXPECT(m.good_messages == ITEMS / FAIL_EVERY);
}

/* ----- /proc/self/maps ----- */

/* Number of mappings of the file with this device and inode (-1 if maps cannot be read). The
 * inode, not the path, identifies the library: argv[1] may be a symlink or a relative path. */
static int mappings_of(dev_t dev, ino_t ino) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[4096];
    int n = 0;
    if (f == NULL) {
        return -1;
    }
    while (fgets(line, sizeof line, f) != NULL) {
        unsigned maj = 0, min = 0;
        unsigned long long inode = 0;
        /* address perms offset dev inode [path] */
        if (sscanf(line, "%*s %*s %*s %x:%x %llu", &maj, &min, &inode) == 3 && inode != 0 &&
            (ino_t)inode == ino && maj == major(dev) && min == minor(dev)) {
            n++;
        }
    }
    fclose(f);
    return n;
}

/* Number of threads of this process (-1 if /proc/self/task cannot be read). */
static int thread_count(void) {
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    int n = 0;
    if (d == NULL) {
        return -1;
    }
    while ((e = readdir(d)) != NULL) {
        n += e->d_name[0] != '.';
    }
    closedir(d);
    return n;
}

/* Waits up to 2 s for the thread count to fall back to `baseline`, and returns it. A joined
 * thread can stay listed for a moment after pthread_join() returns, until the kernel reaps it;
 * a thread that fluxus left running stays for good. */
static int threads_settle(int baseline) {
    struct timespec ms = {0, 1000000L};
    int n = thread_count(), i;
    for (i = 0; i < 2000 && n > baseline; i++) {
        nanosleep(&ms, NULL);
        n = thread_count();
    }
    return n;
}

/* Stores the path of the calling thread's /proc/self/task entry in `arg` (a char[96]). */
static void *note_task_path(void *arg) {
    char link[64];
    ssize_t n = readlink("/proc/thread-self", link, sizeof link - 1); /* "PID/task/TID" */
    if (n > 0) {
        link[n] = '\0';
        snprintf(arg, 96, "/proc/%s", link);
    }
    return NULL;
}

int main(int argc, char **argv) {
    struct stat st;
    long cycles = 1000;
    int baseline_threads;
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s path/to/libfluxus.so [cycles]\n", argv[0]);
        return 2;
    }
    if (argc == 3) {
        cycles = strtol(argv[2], NULL, 10);
    }
    if (stat(argv[1], &st) != 0) {
        perror(argv[1]);
        return 1;
    }
    if (mappings_of(st.st_dev, st.st_ino) != 0) {
        fprintf(stderr, "%s is mapped before the first dlopen (or /proc/self/maps is missing)\n",
                argv[1]);
        return 1;
    }
    /* TSan starts a helper thread with the first pthread_create(): create and join one first,
     * and wait until it is reaped, so the baseline counts the helper and nothing else. */
    {
        pthread_t th;
        char task[96] = "";
        struct timespec ms = {0, 1000000L};
        int i;
        if (pthread_create(&th, NULL, note_task_path, task) != 0 || pthread_join(th, NULL) != 0 ||
            task[0] == '\0') {
            fprintf(stderr, "could not start a thread or read /proc/thread-self\n");
            return 1;
        }
        for (i = 0; i < 2000 && stat(task, &st) == 0; i++) {
            nanosleep(&ms, NULL);
        }
    }
    baseline_threads = thread_count();

    for (long cycle = 1; cycle <= cycles; cycle++) {
        void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
        if (lib == NULL) {
            fprintf(stderr, "cycle %ld: dlopen(%s) failed: %s\n", cycle, argv[1], dlerror());
            return 1;
        }
        if (!resolve_all(lib)) {
            return 1;
        }
        if (cycle == 1 && mappings_of(st.st_dev, st.st_ino) <= 0) {
            /* Otherwise the check below could never fail. Under an emulator (qemu-user, which
             * a cross build's tests run in: Meson sets MESON_EXE_WRAPPER) the maps are the
             * emulator's, not the program's: the test cannot see unmapping there. */
            fprintf(stderr, "the loaded library is not found in /proc/self/maps\n");
            return getenv("MESON_EXE_WRAPPER") != NULL ? 77 : 1;
        }

        run_one_pipeline();

        /* Every runtime is freed: no thread fluxus started may be left. */
        int threads = threads_settle(baseline_threads);
        if (threads > baseline_threads) {
            fprintf(stderr, "cycle %ld: %d threads after every runtime was freed, %d before\n",
                    cycle, threads, baseline_threads);
            return 1;
        }

        memset(&fn, 0, sizeof fn);
        if (dlclose(lib) != 0) {
            fprintf(stderr, "cycle %ld: dlclose failed: %s\n", cycle, dlerror());
            return 1;
        }
        int left = mappings_of(st.st_dev, st.st_ino);
        if (left != 0) {
            fprintf(stderr,
                    "cycle %ld: %d mappings of %s are left after dlclose(): something pins the "
                    "library (a thread_local with a destructor, a STB_GNU_UNIQUE symbol, a thread "
                    "still running)\n",
                    cycle, left, argv[1]);
            return 1;
        }
        if (failures != 0) {
            fprintf(stderr, "cycle %ld: %d checks failed\n", cycle, failures);
            return 1;
        }
    }
    printf("%ld dlopen/run/dlclose cycles; no thread was left and the library was unmapped "
           "after each\n",
           cycles);
    return 0;
}
