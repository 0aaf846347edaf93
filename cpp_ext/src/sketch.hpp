// Per-request telemetry sketch: plain C++17, no Python.
//
// One RequestSketch holds the counters of one telemetry window of one model input: request, sample and
// error counts, a latency histogram, per-feature histograms on the reference profile's edges, and for
// classifiers the predicted-class counts and a confidence histogram. The semantics are defined by
// RequestSketchReference in edgefleet/cpp_ext/reference.py:
//
//   features  "elements":      x viewed as (N, F), one feature per element;
//             "channel_stats": x viewed as (N, C, S), F = 2C features: the mean of each channel, then
//                              the population std (ddof = 0) of each channel, both computed in double
//                              exactly as numpy computes x.mean(axis=2) and x.std(axis=2) (numpy's
//                              pairwise summation order, see pairwise_sum in sketch.cpp).
//   binning   as edgefleet::histogram: value v goes to bin #{k : edges[k] <= v}, NaN to bin E + 1.
//   scores    (N, K) per row: predicted = first index of the maximum (np.argmax: the first NaN wins);
//             confidence = max softmax probability 1 / sum_k exp(s_k - max) (C library exp, numpy's
//             summation order) when softmax, else the max score; NaN if the row holds a NaN.
//   latency   latency_ns / 1e6 milliseconds, binned on the latency edges.
//
// The class does no validation of its own on the hot path: RequestSketch::layout() tells the caller
// whether an input shape fits, and record() requires that it does (see its comment). Not thread-safe:
// the Python binding serialises calls by holding the GIL.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace edgefleet::sketch {

enum class FeatureKind { elements, channel_stats };

// A request's input, C-contiguous: `rows` samples of `channels` x `per_channel` values each.
// "elements" models use channels = F, per_channel = 1.
template <typename T>
struct Batch {
    const T* data;
    std::size_t rows;
    std::size_t channels;
    std::size_t per_channel;
};

// A request's scores, C-contiguous (rows, classes); data == nullptr means "no scores".
template <typename T>
struct Scores {
    const T* data;
    std::size_t rows;
    std::size_t classes;
};

// How an input of a given shape maps onto the sketch's features.
struct Layout {
    bool fits;                     // the shape has the axes the kind needs and implies n_features() features
    std::size_t rows;              // N
    std::size_t channels;          // C ("elements": F)
    std::size_t per_channel;       // S ("elements": 1)
    std::size_t implied_features;  // F the shape implies (for the error message when it does not fit)
};

class RequestSketch {
public:
    // feature_edges is (n_features, n_edges) row-major, each row non-decreasing and free of NaN;
    // confidence_edges is used (and must be sorted) only when n_classes > 0; latency_edges likewise.
    // "channel_stats" needs an even n_features. The caller validates; the constructor only stores.
    RequestSketch(FeatureKind kind, std::vector<double> feature_edges, std::size_t n_features, std::size_t n_edges,
                  std::vector<double> confidence_edges, std::vector<double> latency_edges, std::size_t n_classes,
                  bool softmax);

    // The layout of an input of shape dims[0 .. ndim - 1]: "elements" needs ndim >= 1 and
    // prod(dims[1:]) == F, "channel_stats" needs ndim >= 2 and 2 * dims[1] == F.
    Layout layout(const std::ptrdiff_t* dims, std::size_t ndim) const noexcept;

    // One request. Requires: x's (rows, channels, per_channel) come from a fitting layout(); when
    // n_classes() > 0, scores.data != nullptr with scores.rows == x.rows and scores.classes ==
    // n_classes() (scores are ignored otherwise). latency_ns may be any value.
    void record(const Batch<float>& x, const Scores<float>& scores, std::int64_t latency_ns) noexcept;
    void record(const Batch<float>& x, const Scores<double>& scores, std::int64_t latency_ns) noexcept;
    void record(const Batch<double>& x, const Scores<float>& scores, std::int64_t latency_ns) noexcept;
    void record(const Batch<double>& x, const Scores<double>& scores, std::int64_t latency_ns) noexcept;

    // One failed request: requests += 1, errors += 1, latency binned.
    void record_error(std::int64_t latency_ns) noexcept;

    // Zeroes every counter.
    void reset() noexcept;

    FeatureKind kind() const noexcept { return kind_; }
    std::size_t n_features() const noexcept { return n_features_; }
    std::size_t n_edges() const noexcept { return n_edges_; }
    std::size_t n_classes() const noexcept { return n_classes_; }
    std::size_t n_confidence_edges() const noexcept { return confidence_edges_.size(); }
    std::size_t n_latency_edges() const noexcept { return latency_edges_.size(); }
    bool softmax() const noexcept { return softmax_; }

    std::int64_t requests() const noexcept { return requests_; }
    std::int64_t samples() const noexcept { return samples_; }
    std::int64_t errors() const noexcept { return errors_; }
    // Row-major counts: latency (L + 2), features (F, E + 2), predictions (K), confidence (Ec + 2, or
    // empty when n_classes() == 0).
    const std::vector<std::int64_t>& latency_counts() const noexcept { return latency_; }
    const std::vector<std::int64_t>& feature_counts() const noexcept { return features_; }
    const std::vector<std::int64_t>& prediction_counts() const noexcept { return predictions_; }
    const std::vector<std::int64_t>& confidence_counts() const noexcept { return confidence_; }

private:
    template <typename T, typename U>
    void record_impl(const Batch<T>& x, const Scores<U>& scores, std::int64_t latency_ns) noexcept;
    template <typename T>
    void add_features(const Batch<T>& x) noexcept;
    template <typename U>
    void add_scores(const Scores<U>& scores) noexcept;
    void add_latency(std::int64_t latency_ns) noexcept;

    FeatureKind kind_;
    std::vector<double> feature_edges_;
    std::size_t n_features_;
    std::size_t n_edges_;
    std::vector<double> confidence_edges_;
    std::vector<double> latency_edges_;
    std::size_t n_classes_;
    bool softmax_;

    std::int64_t requests_ = 0;
    std::int64_t samples_ = 0;
    std::int64_t errors_ = 0;
    std::vector<std::int64_t> latency_;
    std::vector<std::int64_t> features_;
    std::vector<std::int64_t> predictions_;
    std::vector<std::int64_t> confidence_;
    std::vector<double> sample_;  // scratch: one sample's channel_stats features
};

}  // namespace edgefleet::sketch
