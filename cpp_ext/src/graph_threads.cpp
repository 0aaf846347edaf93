// The executor's thread pool (see graph_threads.hpp).
#include "graph_threads.hpp"

#include <algorithm>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace edgefleet::graph {
namespace {

thread_local ThreadPool* t_pool = nullptr;

// Below this many multiply-adds a node runs on the caller alone: waking a worker and joining it costs
// a few microseconds, about what one core does in 20-50 k multiply-adds.
constexpr double kMinParallelWork = 65536.0;
constexpr int kSpins = 4000;  // ~50-100 us of polling (a pause is 10-65 cycles) before a worker sleeps

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

ThreadPool::ThreadPool(int threads) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { work(); });
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

void ThreadPool::work() {
    std::uint32_t seen = 0;
    auto generation = [this] { return static_cast<std::uint32_t>(job_.load(std::memory_order_acquire) >> 32); };
    for (;;) {
        for (int spin = 0; generation() == seen && spin < kSpins; ++spin) relax();
        if (generation() == seen) {
            std::unique_lock<std::mutex> lock(mutex_);
            sleeping_.fetch_add(1);
            wake_.wait(lock, [&] { return generation() != seen; });
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
    while (done_.load(std::memory_order_acquire) != tasks) relax();
    if (error_) std::rethrow_exception(error_);
}

void parallel_ranges(std::int64_t total, std::int64_t align, double work,
                     const std::function<void(int, std::int64_t, std::int64_t)>& fn) {
    ThreadPool* pool = current_pool();
    const std::int64_t units = (total + align - 1) / align;
    const int parts = pool == nullptr || work < kMinParallelWork
                          ? 1
                          : static_cast<int>(std::min<std::int64_t>(pool->size(), units));
    if (parts <= 1) {
        fn(0, 0, total);
        return;
    }
    pool->run(parts, [&](int part) {
        const std::int64_t begin = std::min(total, units * part / parts * align);
        const std::int64_t end = std::min(total, units * (part + 1) / parts * align);
        if (begin < end) fn(part, begin, end);
    });
}

}  // namespace edgefleet::graph
