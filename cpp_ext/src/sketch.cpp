// Portable generic per-request sketch (see sketch.hpp for the semantics).
//
// Floating-point contraction must stay off in this file: numpy computes the squared deviations of
// x.std() and their sum in separate passes, so fusing `r += d * d` into one fma (which GCC does by
// default in C++ wherever the ISA has fma, e.g. on every aarch64) would change the last bits of a std
// and with them, now and then, its bin. The pragmas come before any code so that every function in
// this file, header templates included, is compiled the same way.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "sketch.hpp"

#include <algorithm>
#include <cmath>
#include <utility>

#include "histogram.hpp"

namespace edgefleet::sketch {
namespace {

// numpy's pairwise summation (numpy/_core/src/umath/loops_utils.h.src, pairwise_sum), reproduced
// operation for operation so that sums, means and stds are bit-identical to numpy's on a contiguous
// axis: fewer than 8 values are added in order; up to 128 go through 8 interleaved accumulators; longer
// runs are split in two at a multiple of 8. np.add.reduce then adds the result to its identity, 0.0.
// `at(i)` returns the i-th value as a double.
constexpr std::size_t kPairwiseBlock = 128;

template <typename At>
double pairwise_sum(const At& at, std::size_t begin, std::size_t n) noexcept {
    if (n < 8) {
        double res = 0.0;
        for (std::size_t i = 0; i < n; ++i) {
            res += at(begin + i);
        }
        return res;
    }
    if (n <= kPairwiseBlock) {
        double r[8];
        for (std::size_t j = 0; j < 8; ++j) {
            r[j] = at(begin + j);
        }
        std::size_t i = 8;
        for (; i < n - n % 8; i += 8) {
            for (std::size_t j = 0; j < 8; ++j) {
                r[j] += at(begin + i + j);
            }
        }
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; ++i) {
            res += at(begin + i);
        }
        return res;
    }
    std::size_t half = n / 2;
    half -= half % 8;
    return pairwise_sum(at, begin, half) + pairwise_sum(at, begin + half, n - half);
}

template <typename At>
double numpy_sum(const At& at, std::size_t n) noexcept {
    return 0.0 + pairwise_sum(at, 0, n);
}

void add_value(std::int64_t* counts, const std::vector<double>& edges, double v) noexcept {
    const histogram::Samples<double> one{&v, 1, 1, 1, 1};
    histogram::update(counts, one, histogram::Edges{edges.data(), 1, edges.size()});
}

}  // namespace

RequestSketch::RequestSketch(FeatureKind kind, std::vector<double> feature_edges, std::size_t n_features,
                             std::size_t n_edges, std::vector<double> confidence_edges,
                             std::vector<double> latency_edges, std::size_t n_classes, bool softmax)
    : kind_(kind),
      feature_edges_(std::move(feature_edges)),
      n_features_(n_features),
      n_edges_(n_edges),
      confidence_edges_(n_classes > 0 ? std::move(confidence_edges) : std::vector<double>{}),
      latency_edges_(std::move(latency_edges)),
      n_classes_(n_classes),
      softmax_(softmax),
      latency_(latency_edges_.size() + 2, 0),
      features_(n_features * (n_edges + 2), 0),
      predictions_(n_classes, 0),
      confidence_(n_classes > 0 ? confidence_edges_.size() + 2 : 0, 0),
      sample_(kind == FeatureKind::channel_stats ? n_features : 0, 0.0) {}

Layout RequestSketch::layout(const std::ptrdiff_t* dims, std::size_t ndim) const noexcept {
    Layout out{false, 0, 0, 0, 0};
    if (ndim < (kind_ == FeatureKind::elements ? 1U : 2U)) {
        return out;
    }
    out.rows = static_cast<std::size_t>(dims[0]);
    if (kind_ == FeatureKind::elements) {
        std::size_t per_sample = 1;
        for (std::size_t d = 1; d < ndim; ++d) {
            per_sample *= static_cast<std::size_t>(dims[d]);
        }
        out.channels = per_sample;
        out.per_channel = 1;
        out.implied_features = per_sample;
    } else {
        std::size_t per_channel = 1;
        for (std::size_t d = 2; d < ndim; ++d) {
            per_channel *= static_cast<std::size_t>(dims[d]);
        }
        out.channels = static_cast<std::size_t>(dims[1]);
        out.per_channel = per_channel;
        out.implied_features = 2 * out.channels;
    }
    out.fits = out.implied_features == n_features_;
    return out;
}

template <typename T>
void RequestSketch::add_features(const Batch<T>& x) noexcept {
    const auto n_features = static_cast<std::ptrdiff_t>(n_features_);
    const histogram::Edges edges{feature_edges_.data(), n_features_, n_edges_};
    if (kind_ == FeatureKind::elements) {
        histogram::update(features_.data(), histogram::Samples<T>{x.data, x.rows, n_features_, n_features, 1}, edges);
        return;
    }
    // channel_stats: per channel, numpy's mean = sum / S and std = sqrt(sum((v - mean)^2) / S).
    const std::size_t channels = x.channels;
    const std::size_t size = x.per_channel;
    const double count = static_cast<double>(size);
    double* sample = sample_.data();
    const histogram::Samples<double> one_sample{sample, 1, n_features_, n_features, 1};
    for (std::size_t n = 0; n < x.rows; ++n) {
        for (std::size_t c = 0; c < channels; ++c) {
            const T* values = x.data + (n * channels + c) * size;
            const double mean = numpy_sum([values](std::size_t i) { return static_cast<double>(values[i]); }, size) /
                                count;
            const double squares = numpy_sum(
                [values, mean](std::size_t i) {
                    const double deviation = static_cast<double>(values[i]) - mean;
                    return deviation * deviation;
                },
                size);
            sample[c] = mean;
            sample[channels + c] = std::sqrt(squares / count);
        }
        histogram::update(features_.data(), one_sample, edges);
    }
}

template <typename U>
void RequestSketch::add_scores(const Scores<U>& scores) noexcept {
    const std::size_t classes = n_classes_;
    for (std::size_t r = 0; r < scores.rows; ++r) {
        const U* row = scores.data + r * classes;
        // np.argmax / np.max: the first maximum, but the first NaN if there is one.
        std::size_t best = 0;
        double top = static_cast<double>(row[0]);
        if (!std::isnan(top)) {
            for (std::size_t k = 1; k < classes; ++k) {
                const double v = static_cast<double>(row[k]);
                if (std::isnan(v)) {
                    best = k;
                    top = v;
                    break;
                }
                if (v > top) {
                    best = k;
                    top = v;
                }
            }
        }
        ++predictions_[best];
        double confidence = top;  // also the NaN case
        if (softmax_ && !std::isnan(top)) {
            // The largest probability max_k exp(s_k - top) / total is exp(0) / total = 1 / total, as every
            // other term is <= 1. exp(0) == 1 exactly (C Annex F), so the top term skips the call; only
            // for a finite top, though: an infinite one makes its own term inf - inf = NaN.
            const bool finite = std::isfinite(top);
            const double total = numpy_sum(
                [row, top, best, finite](std::size_t k) {
                    return finite && k == best ? 1.0 : std::exp(static_cast<double>(row[k]) - top);
                },
                classes);
            confidence = 1.0 / total;
        }
        add_value(confidence_.data(), confidence_edges_, confidence);
    }
}

void RequestSketch::add_latency(std::int64_t latency_ns) noexcept {
    add_value(latency_.data(), latency_edges_, static_cast<double>(latency_ns) / 1e6);
}

template <typename T, typename U>
void RequestSketch::record_impl(const Batch<T>& x, const Scores<U>& scores, std::int64_t latency_ns) noexcept {
    ++requests_;
    samples_ += static_cast<std::int64_t>(x.rows);
    add_features(x);
    if (n_classes_ > 0) {
        add_scores(scores);
    }
    add_latency(latency_ns);
}

void RequestSketch::record(const Batch<float>& x, const Scores<float>& scores, std::int64_t latency_ns) noexcept {
    record_impl(x, scores, latency_ns);
}

void RequestSketch::record(const Batch<float>& x, const Scores<double>& scores, std::int64_t latency_ns) noexcept {
    record_impl(x, scores, latency_ns);
}

void RequestSketch::record(const Batch<double>& x, const Scores<float>& scores, std::int64_t latency_ns) noexcept {
    record_impl(x, scores, latency_ns);
}

void RequestSketch::record(const Batch<double>& x, const Scores<double>& scores, std::int64_t latency_ns) noexcept {
    record_impl(x, scores, latency_ns);
}

void RequestSketch::record_error(std::int64_t latency_ns) noexcept {
    ++requests_;
    ++errors_;
    add_latency(latency_ns);
}

void RequestSketch::reset() noexcept {
    requests_ = samples_ = errors_ = 0;
    for (auto* counts : {&latency_, &features_, &predictions_, &confidence_}) {
        std::fill(counts->begin(), counts->end(), 0);
    }
}

}  // namespace edgefleet::sketch
