// The executor's thread pool (see graph_threads.hpp).
#include "graph_threads.hpp"

#include <algorithm>
#include <chrono>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace edgefleet::graph {
namespace {

thread_local ThreadPool* t_pool = nullptr;
thread_local int t_slot = 0;  // 0: the caller; 1 .. N-1: the pool's workers

// Below this many multiply-adds a node runs on the caller alone: handing parts to a worker and joining
// it costs one to a few microseconds (cache lines moving between the cores, a late worker), about what
// one core does in 40-100 k multiply-adds, so a smaller node gains nothing from a second thread.
constexpr double kMinParallelWork = 131072.0;
// A node is cut into up to kPartsPerThread parts per thread, none under kMinPartWork multiply-adds
// (~3-5 us): parts are claimed one by one, so when a thread is late (woken late, or descheduled by
// another process on a busy machine) the others take its share instead of waiting for it (parts of
// 256 k made the ResNet and wide CNNs 3-5% slower at 2 threads on a lightly loaded machine).
constexpr int kPartsPerThread = 4;
constexpr double kMinPartWork = 131072.0;
// How long an idle worker polls before it sleeps: while a run is in progress, long enough to bridge any
// gap between two split nodes (a sleeping worker takes tens of microseconds to wake on a VM, hundreds
// on a loaded machine); between runs, briefly, so back-to-back calls find it awake but the caller's
// other work (and other processes) get the core back.
constexpr auto kSpinInRun = std::chrono::milliseconds(2);
constexpr auto kSpinBetweenRuns = std::chrono::microseconds(100);
// Past this a polling worker yields its core at each clock check (a no-op when no other thread waits).
constexpr auto kYieldAfter = std::chrono::microseconds(50);

inline void relax() {
#if defined(__x86_64__) || defined(_M_X64)
    _mm_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

}  // namespace

ThreadPool* current_pool() { return t_pool; }
void set_current_pool(ThreadPool* pool) { t_pool = pool; }
int thread_slot() { return t_slot; }

ThreadPool::ThreadPool(int threads) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { work(i); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_.store(true);
        job_.fetch_add(std::uint64_t{1} << 32, std::memory_order_release);
    }
    wake_.notify_all();
    for (std::thread& t : workers_) t.join();
}

void ThreadPool::begin_run() {
    in_run_.store(true, std::memory_order_release);
    if (sleeping_.load() > 0) {  // wake now: the wake-up overlaps the first nodes instead of delaying a split one
        {
            std::lock_guard<std::mutex> lock(mutex_);
            kicks_.fetch_add(1, std::memory_order_release);
        }
        wake_.notify_all();
    }
}

void ThreadPool::end_run() { in_run_.store(false, std::memory_order_release); }

bool ThreadPool::take() {
    std::uint64_t job = job_.load(std::memory_order_acquire);
    for (;;) {
        const auto tasks = static_cast<int>((job >> 16) & 0xFFFF), next = static_cast<int>(job & 0xFFFF);
        if (next >= tasks) return false;
        const std::function<void(int)>* fn = fn_.load(std::memory_order_acquire);
        if (job_.compare_exchange_weak(job, job + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
            try {
                (*fn)(next);
            } catch (...) {
                std::lock_guard<std::mutex> lock(error_mutex_);
                if (!error_) error_ = std::current_exception();
            }
            done_.fetch_add(1, std::memory_order_acq_rel);
            return true;
        }
    }
}

void ThreadPool::work(int slot) {
    t_slot = slot;
    std::uint32_t seen = 0;
    auto generation = [this] { return static_cast<std::uint32_t>(job_.load(std::memory_order_acquire) >> 32); };
    using Clock = std::chrono::steady_clock;
    for (;;) {
        Clock::time_point idle = Clock::now();
        for (int spin = 1; generation() == seen; ++spin) {
            relax();
            if (spin % 64 == 0) {  // the clock every ~2 us
                const Clock::duration waited = Clock::now() - idle;
                if (waited > (in_run_.load(std::memory_order_relaxed) ? Clock::duration(kSpinInRun)
                                                                      : Clock::duration(kSpinBetweenRuns))) {
                    break;
                }
                if (waited > kYieldAfter) std::this_thread::yield();  // a descheduled caller may need this core
            }
        }
        if (generation() == seen) {
            std::unique_lock<std::mutex> lock(mutex_);
            const std::uint32_t kicks = kicks_.load(std::memory_order_acquire);
            sleeping_.fetch_add(1);
            wake_.wait(lock, [&] { return generation() != seen || kicks_.load(std::memory_order_acquire) != kicks; });
            sleeping_.fetch_sub(1);
        }
        seen = generation();
        if (stop_.load()) return;
        while (take()) {
        }
    }
}

void ThreadPool::run(int tasks, const std::function<void(int)>& fn) {
    if (tasks <= 1 || workers_.empty() || tasks > 0xFFFF) {
        for (int i = 0; i < tasks; ++i) fn(i);
        return;
    }
    jobs_.fetch_add(1, std::memory_order_relaxed);
    error_ = nullptr;
    done_.store(0, std::memory_order_relaxed);
    fn_.store(&fn, std::memory_order_release);
    {
        std::lock_guard<std::mutex> lock(mutex_);  // a worker between its check and its wait sees this
        const std::uint64_t generation = (job_.load(std::memory_order_relaxed) >> 32) + 1;
        job_.store((generation << 32) | (static_cast<std::uint64_t>(tasks) << 16), std::memory_order_release);
    }
    if (sleeping_.load() > 0) wake_.notify_all();
    while (take()) {
    }
    // Waits for the parts the workers claimed; yields when that takes long: on a busy machine a worker
    // descheduled mid-part may be waiting for this very core.
    for (int spin = 1; done_.load(std::memory_order_acquire) != tasks; ++spin) {
        relax();
        if (spin % 1024 == 0) std::this_thread::yield();
    }
    if (error_) std::rethrow_exception(error_);
}

void parallel_ranges(std::int64_t total, std::int64_t align, double work,
                     const std::function<void(int, std::int64_t, std::int64_t)>& fn) {
    ThreadPool* pool = current_pool();
    const std::int64_t units = (total + align - 1) / align;
    int parts = 1;
    if (pool != nullptr && work >= kMinParallelWork) {
        const double most = std::max(static_cast<double>(pool->size()), work / kMinPartWork);
        parts = static_cast<int>(std::min<double>({most, static_cast<double>(pool->size() * kPartsPerThread),
                                                   static_cast<double>(units)}));
    }
    if (parts <= 1) {
        fn(0, 0, total);
        return;
    }
    pool->run(parts, [&](int part) {
        const std::int64_t begin = std::min(total, units * part / parts * align);
        const std::int64_t end = std::min(total, units * (part + 1) / parts * align);
        if (begin < end) fn(t_slot, begin, end);
    });
}

}  // namespace edgefleet::graph
