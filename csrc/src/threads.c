/*
 * threads.c — the library's own small thread pool (no OpenMP: libgomp hangs in a
 * fork()ed child that uses it after the parent did).
 *
 * Waking a sleeping thread costs tens of microseconds — as much as a whole batch-1 GEMV
 * — so workers (and the caller waiting for them) spin for SPIN_NS before sleeping:
 * back-to-back calls, the common case in a decode loop or a network's layers, then hand
 * work over in well under a microsecond. After the spin a worker naps in POLL_PERIOD_NS
 * steps (nanosleep) for POLL_NS, and only then sleeps on the condition variable. The nap
 * phase exists for the cold call (a call after a pause, e.g. a decode step after other
 * work): the caller then posts the job without a system call — pthread_cond_broadcast
 * makes none when no one waits on it — where waking a condvar sleeper cost the caller
 * 10-80 us on a 2-vCPU VM (futex wake + IPI), and the napping worker joins within about
 * a period. Idle workers burn at most SPIN_NS of CPU and ~POLL_NS / POLL_PERIOD_NS
 * wake-ups after each job, then sleep.
 *
 * Workers run as SCHED_BATCH (Linux; allowed unprivileged): a woken SCHED_OTHER worker
 * placed on the caller's CPU preempted the caller right inside the wake-up call, so the
 * caller sat in pthread_cond_broadcast for 0.45-6 ms while the worker did the whole job
 * alone (measured: cold 11008x4096 GEMV, 2 threads 450-6000 us against 1 thread 250 us
 * on a busy machine). SCHED_BATCH threads never preempt on wake-up; otherwise they are
 * scheduled like any other thread.
 *
 * Model: one job at a time. A call that finds the pool busy (another thread's job is
 * running) runs its tasks on the calling thread instead of waiting, so concurrent callers
 * never deadlock and never queue behind each other. The caller waits only for workers
 * that joined its job (took a task): on a loaded machine a sleeping or descheduled
 * worker can take milliseconds to run, and waiting for it made a 26 us GEMV take ~850 us
 * (measured with the other core busy); now the caller just runs the tasks itself. Workers are created lazily, up to
 * the largest count asked for, and sleep on a condition variable between jobs.
 *
 * Oversubscription guard: a worker that joined a job and was then descheduled (the machine
 * has more runnable threads than cores) holds its task until the OS runs it again — often
 * milliseconds — and the caller must wait: no one else may finish a task a worker started,
 * since that worker may still write its part of the output. When the caller waited longer
 * than LATE_NS after running out of tasks, and longer than half its own working time, the
 * pool runs the calls of the next backoff period on the calling thread alone (2 ms,
 * doubling while it keeps happening, up to 0.25 s; a punctual job resets it). On a free
 * machine this never triggers; on an oversubscribed one a call with 2 threads then costs
 * what it costs with 1 instead of a multiple of it.
 *
 * fork(): the prepare handler takes both locks (so no job is mid-flight), the parent
 * releases them, and the child releases them and forgets the workers — they do not
 * exist in the child — so the child recreates its own pool on first use.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <time.h>

#include "internal.h"

#define MAX_WORKERS 63
#define SPIN_NS 200000 /* 0.2 ms */
#define POLL_NS 20000000            /* 20 ms */
#define POLL_PERIOD_NS 100000       /* 0.1 ms */
#define LATE_NS 50000               /* 50 us: a joined worker this late was descheduled */
#define BACKOFF_MIN_NS 2000000      /* 2 ms */
#define BACKOFF_MAX_NS 256000000    /* 0.256 s */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Spin while (*word == value) == equal, for at most SPIN_NS. The caller re-checks
 * under the lock afterwards: spinning only shortens the wait, it decides nothing. */
static void spin_while(const unsigned long *word, unsigned long value, int equal) {
    const int64_t deadline = now_ns() + SPIN_NS;
    for (unsigned i = 0; (__atomic_load_n(word, __ATOMIC_ACQUIRE) == value) == equal; i++) {
        cpu_relax();
        if ((i & 63) == 63 && now_ns() > deadline) return;
    }
}

/* Nap-poll while (*word == value), for at most POLL_NS: a worker between spinning and
 * sleeping on the condition variable (header comment). */
static void poll_while(const unsigned long *word, unsigned long value) {
    const int64_t deadline = now_ns() + POLL_NS;
    const struct timespec nap = {0, POLL_PERIOD_NS};
    while (__atomic_load_n(word, __ATOMIC_ACQUIRE) == value && now_ns() < deadline)
        nanosleep(&nap, NULL);
}

static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER;  /* held by the job owner */
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER; /* guards the fields below */
static pthread_cond_t work_cv = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static int n_workers;            /* created and alive */
static unsigned long start_generation[MAX_WORKERS]; /* generation when worker i was made */
static unsigned long generation; /* bumped once per job */
static int job_workers;          /* workers that may take part in the current job */
static unsigned long job_active; /* workers that joined the job and are not done (atomic reads) */
static takane_task_fn job_fn;    /* NULL once the job is closed: nobody joins any more */
static void *job_ctx;
static int64_t job_ntasks;
static int64_t job_next; /* atomic: next task index to take */

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
/* The oversubscription guard (header comment); read and written only under run_lock. */
static int64_t serial_until_ns;
static int64_t backoff_ns = BACKOFF_MIN_NS;

static void run_tasks(takane_task_fn fn, void *ctx, int64_t ntasks) {
    for (;;) {
        const int64_t t = __atomic_fetch_add(&job_next, 1, __ATOMIC_RELAXED);
        if (t >= ntasks) return;
        fn(ctx, t);
    }
}

static void *worker_main(void *arg) {
    const int index = (int)(intptr_t)arg;
#if defined(SCHED_BATCH)
    /* No wake-up preemption (header comment); unprivileged, and failure changes nothing. */
    struct sched_param param = {0};
    (void)pthread_setschedparam(pthread_self(), SCHED_BATCH, &param);
#endif
    pthread_mutex_lock(&pool_lock);
    /* Not the current value: the job that created this worker may already have bumped
     * it, and that job counts on this worker taking part. */
    unsigned long seen = start_generation[index];
    for (;;) {
        if (generation == seen) {
            pthread_mutex_unlock(&pool_lock);
            spin_while(&generation, seen, 1); /* until a new job is posted */
            poll_while(&generation, seen);
            pthread_mutex_lock(&pool_lock);
        }
        while (generation == seen) pthread_cond_wait(&work_cv, &pool_lock);
        seen = generation;
        /* Join only an open job with tasks left: a worker that wakes late (asleep, or
         * descheduled on a busy machine) must neither delay the caller, who may already
         * have run every task itself, nor touch a job that has returned. */
        if (index >= job_workers || job_fn == NULL ||
            __atomic_load_n(&job_next, __ATOMIC_RELAXED) >= job_ntasks)
            continue;
        takane_task_fn fn = job_fn;
        void *ctx = job_ctx;
        const int64_t ntasks = job_ntasks;
        __atomic_add_fetch(&job_active, 1, __ATOMIC_RELAXED); /* under pool_lock */
        pthread_mutex_unlock(&pool_lock);
        run_tasks(fn, ctx, ntasks);
        pthread_mutex_lock(&pool_lock);
        if (__atomic_sub_fetch(&job_active, 1, __ATOMIC_RELEASE) == 0) pthread_cond_signal(&done_cv);
    }
    return NULL;
}

static void atfork_prepare(void) {
    pthread_mutex_lock(&run_lock);
    pthread_mutex_lock(&pool_lock);
}
static void atfork_parent(void) {
    pthread_mutex_unlock(&pool_lock);
    pthread_mutex_unlock(&run_lock);
}
static void atfork_child(void) {
    n_workers = 0; /* the workers were not copied into this process */
    job_workers = 0;
    job_active = 0;
    job_fn = NULL;
    /* Fresh locks and condition variables: a parent worker asleep in pthread_cond_wait at
     * fork time stays registered as a waiter in the copied condvar, and glibc's broadcast
     * can then wait forever for that phantom waiter to leave. This thread is the only one
     * in the child, so re-initialising is safe. */
    pthread_mutex_init(&pool_lock, NULL);
    pthread_mutex_init(&run_lock, NULL);
    pthread_cond_init(&work_cv, NULL);
    pthread_cond_init(&done_cv, NULL);
}
static void register_atfork(void) { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); }

int32_t takane_default_threads(void) {
    static int cached; /* 0 = not computed yet; benign race: every thread computes the same */
    int n = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (n > 0) return n;
    const char *env = getenv("TAKANE_NUM_THREADS");
    if (env && *env) {
        char *end;
        const long v = strtol(env, &end, 10);
        if (*end == '\0' && v >= 1) n = v > MAX_WORKERS + 1 ? MAX_WORKERS + 1 : (int)v;
    }
    if (n <= 0) {
        cpu_set_t set;
        n = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
        if (n < 1) n = 1;
        if (n > MAX_WORKERS + 1) n = MAX_WORKERS + 1;
    }
    __atomic_store_n(&cached, n, __ATOMIC_RELAXED);
    return n;
}

void takane_parallel_run(int nthreads, int64_t ntasks, takane_task_fn fn, void *ctx) {
    if (nthreads > ntasks) nthreads = (int)ntasks;
    if (nthreads > MAX_WORKERS + 1) nthreads = MAX_WORKERS + 1;
    if (nthreads <= 1 || pthread_mutex_trylock(&run_lock) != 0) {
        for (int64_t t = 0; t < ntasks; t++) fn(ctx, t); /* serial, or pool busy */
        return;
    }
    const int64_t t_start = now_ns();
    if (t_start < serial_until_ns) { /* backing off: workers were late just before */
        pthread_mutex_unlock(&run_lock);
        for (int64_t t = 0; t < ntasks; t++) fn(ctx, t);
        return;
    }
    pthread_once(&atfork_once, register_atfork);
    pthread_mutex_lock(&pool_lock);
    while (n_workers < nthreads - 1) {
        pthread_t tid;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        start_generation[n_workers] = generation;
        const int ok = pthread_create(&tid, &attr, worker_main, (void *)(intptr_t)n_workers) == 0;
        pthread_attr_destroy(&attr);
        if (!ok) break; /* run with the workers we have */
        n_workers++;
    }
    job_workers = nthreads - 1 < n_workers ? nthreads - 1 : n_workers;
    job_fn = fn;
    job_ctx = ctx;
    job_ntasks = ntasks;
    __atomic_store_n(&job_next, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&generation, generation + 1, __ATOMIC_RELEASE); /* spinners see it */
    pthread_mutex_unlock(&pool_lock);
    /* Sleepers re-check generation under pool_lock before waiting, so waking them after
     * the unlock loses no wake-up, and a woken worker does not block on the lock. */
    pthread_cond_broadcast(&work_cv);

    run_tasks(fn, ctx, ntasks); /* the caller works too */
    const int64_t t_done = now_ns();

    /* Every task is taken. Close the job (late workers stay out), then wait only for
     * the workers that joined: they may still be running their last task. */
    pthread_mutex_lock(&pool_lock);
    job_fn = NULL;
    pthread_mutex_unlock(&pool_lock);
    spin_while(&job_active, 0, 0);
    pthread_mutex_lock(&pool_lock);
    while (__atomic_load_n(&job_active, __ATOMIC_ACQUIRE) > 0) pthread_cond_wait(&done_cv, &pool_lock);
    pthread_mutex_unlock(&pool_lock);
    const int64_t t_end = now_ns(), waited = t_end - t_done;
    if (waited > LATE_NS && waited > (t_done - t_start) / 2) {
        serial_until_ns = t_end + backoff_ns;
        backoff_ns = backoff_ns * 2 > BACKOFF_MAX_NS ? BACKOFF_MAX_NS : backoff_ns * 2;
    } else {
        backoff_ns = BACKOFF_MIN_NS;
    }
    pthread_mutex_unlock(&run_lock);
}

/* ---- per-thread scratch ---------------------------------------------------------------- */

typedef struct scratch {
    void *p;
    size_t cap;
} scratch;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
/* TAKANE_SCRATCH_CALL and TAKANE_SCRATCH_TASK (internal.h) */
static __thread scratch tls_scratch[2];

static void scratch_release(void *unused) {
    (void)unused;
    for (int i = 0; i < 2; i++) {
        free(tls_scratch[i].p);
        tls_scratch[i].p = NULL;
        tls_scratch[i].cap = 0;
    }
}
static void scratch_init(void) { (void)pthread_key_create(&scratch_key, scratch_release); }

void *takane_scratch_get(int slot, size_t bytes) {
    scratch *s = &tls_scratch[slot];
    if (s->cap >= bytes && s->p) return s->p;
    pthread_once(&scratch_once, scratch_init);
    free(s->p);
    s->cap = 0;
    const size_t rounded = (bytes + 63) / 64 * 64 + 64;
    s->p = aligned_alloc(64, rounded);
    if (!s->p) return NULL;
    s->cap = rounded;
    /* a non-NULL value makes the key's destructor run when this thread exits */
    (void)pthread_setspecific(scratch_key, s);
    return s->p;
}
