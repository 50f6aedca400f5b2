// Metrics: what shoald counts as things happen, and the Prometheus text exposition format
// (version 0.0.4) that the /metrics page is written in.
//
// - Metrics owns the event counters and histograms, kept since shoald started: infer
//   requests answered, by model and outcome code; how long jobs waited in the queue and
//   ran, per model (histograms with fixed buckets, in seconds); the size of each run of a
//   model that batches; crash loops, by model and verdict. The scheduler and the client
//   front count into it; nothing else does. Figures the roles already hold (queued jobs,
//   workers' memory, ...) are not copied here: the page reads them from their owners when
//   it is scraped (supervisor/metrics_page.h).
// - Exposition writes the format: each family once with its HELP and TYPE lines, label
//   values and help texts escaped as the format says, histograms as cumulative _bucket
//   lines (le="+Inf" last) plus _sum and _count. Pure: tested alone.
// Thread-safety: loop thread only (Metrics); Exposition and Histogram are plain values.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shoal/status.h"

namespace shoal {

// Upper bounds of the job time buckets, in seconds: 100 us to 60 s.
extern const std::vector<double> kJobSecondsBuckets;
// Upper bounds of the batch size buckets (jobs per run): 1 to 256.
extern const std::vector<double> kBatchSizeBuckets;

class Histogram {
 public:
  // `bounds`: the buckets' upper bounds, ascending; "+Inf" comes on top of them.
  explicit Histogram(const std::vector<double>& bounds = kJobSecondsBuckets);
  void Observe(double value);
  const std::vector<double>& bounds() const { return bounds_; }
  // Observations per bucket, not cumulative: counts()[i] fell in (bounds[i-1], bounds[i]];
  // the last one (bounds().size()) above every bound.
  const std::vector<uint64_t>& counts() const { return counts_; }
  double sum() const { return sum_; }
  uint64_t count() const { return count_; }

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;
  double sum_ = 0;
  uint64_t count_ = 0;
};

using Labels = std::vector<std::pair<std::string, std::string>>;

class Exposition {
 public:
  // Starts a family: "# HELP name help" and "# TYPE name type" (counter, gauge, histogram).
  // Its samples must follow before the next family starts (the format keeps them together).
  void Family(std::string_view name, std::string_view type, std::string_view help);
  // One sample line: name{labels} value. `name` is the family's, or with a suffix.
  void Sample(std::string_view name, const Labels& labels, double value);
  // A histogram's lines for one label set: name_bucket{labels,le="..."} (cumulative, up to
  // le="+Inf", which equals the count), name_sum, name_count.
  void Sample(std::string_view name, const Labels& labels, const Histogram& h);
  const std::string& text() const { return out_; }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

// The format's escapes: label values escape \, " and newline; HELP texts \ and newline.
std::string EscapeLabelValue(std::string_view value);
std::string EscapeHelp(std::string_view help);
// A sample value: whole numbers with all their digits, others in the shortest form that
// reads back exactly (as %g writes it); NaN, +Inf, -Inf.
std::string FormatValue(double value);

// What a crash loop decided (ModelRegistry::RecordCrash).
enum class CrashVerdict {
  kCounted,        // the crash is on record, nothing more yet
  kClientRefused,  // the client whose jobs crashed it is refused the model for the window
  kModelFailed,    // the model is marked failed
};

class Metrics {
 public:
  Metrics() = default;
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // An infer request was answered with `code` (kOk: its outputs). `model` is the key it
  // resolved to ("name", "name:version"); empty when refused before its name resolved.
  void Answered(const std::string& model, Code code);
  // A job of `model` started after waiting `seconds` since it was accepted.
  void Waited(const std::string& model, double seconds);
  // A job of `model` ran `seconds` on its worker (the worker's answer came, outputs or the
  // model's error).
  void Ran(const std::string& model, double seconds);
  void CrashLoop(const std::string& model, CrashVerdict verdict);
  // A run of `model`, whose policy batches, started with `jobs` jobs (1: one ran alone).
  void Batched(const std::string& model, size_t jobs);

  // shoal_requests_total, shoal_queue_duration_seconds, shoal_compute_duration_seconds,
  // shoal_batch_size, shoal_crash_loops_total.
  void Render(Exposition* out) const;

 private:
  struct PerModel {
    std::map<Code, uint64_t> answered;
    Histogram waited, ran;
    Histogram batch_size{kBatchSizeBuckets};
    uint64_t refusals = 0, failures = 0;  // crash loop verdicts
  };
  std::map<std::string, PerModel> models_;
};

}  // namespace shoal
