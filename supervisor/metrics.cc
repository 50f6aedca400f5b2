// shoald's counters and the text exposition format (supervisor/metrics.h).
#include "supervisor/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>

namespace shoal {

const std::vector<double> kJobSecondsBuckets = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10,
                                                30,     60};
const std::vector<double> kBatchSizeBuckets = {1, 2, 4, 8, 16, 32, 64, 128, 256};

Histogram::Histogram(const std::vector<double>& bounds) : bounds_(bounds), counts_(bounds.size() + 1, 0) {}

void Histogram::Observe(double value) {
  // The first bucket whose bound is >= value ("le": less or equal).
  size_t i = static_cast<size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
  ++counts_[i];
  sum_ += value;
  ++count_;
}

namespace {
// Backslash and newline always; the double quote too inside a label value.
std::string Escape(std::string_view text, bool quote) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    if (c == '\\' || (quote && c == '"')) {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}
}  // namespace

std::string EscapeLabelValue(std::string_view value) { return Escape(value, true); }

std::string EscapeHelp(std::string_view help) { return Escape(help, false); }

std::string FormatValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buf[64];
  if (value == std::trunc(value) && std::fabs(value) < 1e15) {  // counts and byte figures: all digits
    auto r = std::to_chars(buf, buf + sizeof buf, static_cast<int64_t>(value));
    return std::string(buf, r.ptr);
  }
  // The shortest form that reads back exactly, written as %g would ("0.0001", "1e-05"), like
  // Prometheus's own clients.
  auto r = std::to_chars(buf, buf + sizeof buf, value, std::chars_format::general);
  return std::string(buf, r.ptr);
}

void Exposition::Family(std::string_view name, std::string_view type, std::string_view help) {
  out_.append("# HELP ").append(name).append(" ").append(EscapeHelp(help)).append("\n");
  out_.append("# TYPE ").append(name).append(" ").append(type).append("\n");
}

namespace {

void AppendLabels(std::string* out, const Labels& labels, const std::pair<std::string, std::string>* extra) {
  if (labels.empty() && extra == nullptr) return;
  *out += '{';
  bool first = true;
  auto one = [&](const std::pair<std::string, std::string>& l) {
    if (!first) *out += ',';
    first = false;
    out->append(l.first).append("=\"").append(EscapeLabelValue(l.second)).append("\"");
  };
  for (const auto& l : labels) one(l);
  if (extra != nullptr) one(*extra);
  *out += '}';
}

}  // namespace

void Exposition::Sample(std::string_view name, const Labels& labels, double value) {
  out_.append(name);
  AppendLabels(&out_, labels, nullptr);
  out_.append(" ").append(FormatValue(value)).append("\n");
}

void Exposition::Sample(std::string_view name, const Labels& labels, const Histogram& h) {
  std::string bucket = std::string(name) + "_bucket";
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= h.bounds().size(); ++i) {
    cumulative += h.counts()[i];
    std::pair<std::string, std::string> le{"le", i < h.bounds().size() ? FormatValue(h.bounds()[i]) : "+Inf"};
    out_.append(bucket);
    AppendLabels(&out_, labels, &le);
    out_.append(" ").append(std::to_string(cumulative)).append("\n");
  }
  Sample(std::string(name) + "_sum", labels, h.sum());
  Sample(std::string(name) + "_count", labels, static_cast<double>(h.count()));
}

void Metrics::Answered(const std::string& model, Code code) { ++models_[model].answered[code]; }

void Metrics::Waited(const std::string& model, double seconds) { models_[model].waited.Observe(seconds); }

void Metrics::Ran(const std::string& model, double seconds) { models_[model].ran.Observe(seconds); }

void Metrics::Batched(const std::string& model, size_t jobs) {
  models_[model].batch_size.Observe(static_cast<double>(jobs));
}

void Metrics::CrashLoop(const std::string& model, CrashVerdict verdict) {
  if (verdict == CrashVerdict::kClientRefused) ++models_[model].refusals;
  if (verdict == CrashVerdict::kModelFailed) ++models_[model].failures;
}

void Metrics::Render(Exposition* out) const {
  out->Family("shoal_requests_total", "counter",
              "Infer requests answered, by model and outcome code (OK, or the error code the client got; model is "
              "empty for requests refused before their model name resolved).");
  for (const auto& [model, m] : models_) {
    for (const auto& [code, n] : m.answered) {
      out->Sample("shoal_requests_total", {{"model", model}, {"code", CodeName(code)}}, static_cast<double>(n));
    }
  }
  out->Family("shoal_queue_duration_seconds", "histogram",
              "Time jobs waited from acceptance to the start of their run, per model.");
  for (const auto& [model, m] : models_) {
    if (m.waited.count() > 0) out->Sample("shoal_queue_duration_seconds", {{"model", model}}, m.waited);
  }
  out->Family("shoal_compute_duration_seconds", "histogram",
              "Time jobs ran on a worker until its answer (outputs or the model's error), per model.");
  for (const auto& [model, m] : models_) {
    if (m.ran.count() > 0) out->Sample("shoal_compute_duration_seconds", {{"model", model}}, m.ran);
  }
  out->Family("shoal_batch_size", "histogram",
              "Jobs per run of models that batch (max_batch > 1): 1 for a job that ran alone, per model.");
  for (const auto& [model, m] : models_) {
    if (m.batch_size.count() > 0) out->Sample("shoal_batch_size", {{"model", model}}, m.batch_size);
  }
  out->Family("shoal_crash_loops_total", "counter",
              "Crash loops: a client refused a model for crash_window_s (verdict client_refused), or a model marked "
              "failed (model_failed).");
  for (const auto& [model, m] : models_) {
    if (m.refusals == 0 && m.failures == 0) continue;
    out->Sample("shoal_crash_loops_total", {{"model", model}, {"verdict", "client_refused"}},
                static_cast<double>(m.refusals));
    out->Sample("shoal_crash_loops_total", {{"model", model}, {"verdict", "model_failed"}},
                static_cast<double>(m.failures));
  }
}

}  // namespace shoal
