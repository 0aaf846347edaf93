// The graph executor's worker threads: a small fixed pool per executor (the `threads` load option).
//
// threads = N runs N - 1 workers; the calling thread is the N-th, so a run never has more busy threads
// than N (no oversubscription with the caller), and threads = 1 creates no pool at all. Ops split their
// output into disjoint parts (pixel tiles of a conv, channels of a depthwise conv, row or column blocks
// of a GEMM) at the boundaries of the kernels' own tiles: every output value is computed by the same
// code with the same summation order whatever the thread count, so results are bit-identical to one
// thread. A node is cut into up to 4 parts per thread, claimed one at a time, so a late thread (woken
// late, or descheduled on a busy machine) costs at most one part's wait. While a run is in progress
// (begin_run .. end_run) idle workers poll for the next node for up to 2 ms and never sleep between two
// nodes: a worker asleep on the condition variable takes tens of microseconds to wake on a VM and
// hundreds on a loaded machine, and had then missed most split nodes of a CNN. Between runs they poll
// for 100 us, then sleep; begin_run wakes them while the first nodes run. The executor counts the jobs
// (jobs()) each node hands out: a plan whose first run split no node runs without the pool from then on,
// so a small model at threads = 2 neither wakes the workers nor keeps a core polling.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace edgefleet::graph {

class ThreadPool {
public:
    explicit ThreadPool(int threads);  // threads >= 2
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return static_cast<int>(workers_.size()) + 1; }
    // Calls fn(i) for every i in [0, tasks) across the pool and the caller; returns when all are done.
    // The caller takes tasks too, and waits only for tasks a worker has claimed: a worker the OS has not
    // scheduled yet never holds a run up. The first exception a task throws is rethrown here.
    void run(int tasks, const std::function<void(int)>& fn);
    // Around one executor run: workers stay awake between its nodes (see above).
    void begin_run();
    void end_run();
    // Jobs run() has handed to the pool so far (calls with more than one task): a caller compares two
    // readings to tell whether the code between them split its work.
    std::uint64_t jobs() const { return jobs_.load(std::memory_order_relaxed); }

private:
    void work(int slot);
    bool take();  // runs one task of the current job if one is left; false when none is

    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable wake_;
    // The job: generation (high 32 bits), task count (16 bits), next unclaimed task (low 16 bits). A
    // worker claims a task by compare-and-swap on the whole word, so a claim can never land in a job
    // other than the one whose function pointer it read.
    std::atomic<std::uint64_t> job_{0};
    std::atomic<const std::function<void(int)>*> fn_{nullptr};
    std::atomic<int> done_{0};
    std::atomic<int> sleeping_{0};
    std::atomic<bool> stop_{false};
    std::atomic<bool> in_run_{false};
    std::atomic<std::uint64_t> jobs_{0};
    std::atomic<std::uint32_t> kicks_{0};  // begin_run's wake-ups of sleeping workers
    std::exception_ptr error_;
    std::mutex error_mutex_;
};

// The pool of the run in progress on this thread (set by the executor around plan and run), or null.
ThreadPool* current_pool();
void set_current_pool(ThreadPool* pool);
// The calling thread's slot in its pool: 0 for the caller, 1 .. size() - 1 for the workers.
int thread_slot();
// Threads the current run may use: the pool's size, or 1.
inline int pool_threads() { return current_pool() != nullptr ? current_pool()->size() : 1; }

// Splits [0, total) into parts whose boundaries are multiples of `align` (at most 4 per thread, each
// worth at least ~128 k multiply-adds; nodes under 128 k run on the caller) and runs fn(slot, begin, end) for each, in parallel when there is
// a pool and `work` (a rough count of multiply-adds) is worth the hand-off; otherwise one call
// fn(0, 0, total). slot is the running thread's (thread_slot(), below pool_threads()): per-thread
// scratch is indexed by it, as one thread may run several parts.
void parallel_ranges(std::int64_t total, std::int64_t align, double work,
                     const std::function<void(int, std::int64_t, std::int64_t)>& fn);

}  // namespace edgefleet::graph
