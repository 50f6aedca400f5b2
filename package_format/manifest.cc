// A strict JSON reader for the manifest keys shoald reads (package_format/manifest.h).
#include "package_format/manifest.h"

#include <algorithm>
#include <cstdint>
#include <string>

#include "package_format/served_object.h"
#include "protocol/descriptor.h"
#include "protocol/dtypes.h"

namespace shoal {

namespace {

constexpr int kMaxDepth = 32;

class Reader {
 public:
  Reader(std::string_view text, std::string_view what) : s_(text), what_(what) {}

  Result<ManifestPolicy> Manifest() {
    Space();
    if (!Eat('{')) return Bad("is not a JSON object");
    ManifestPolicy policy;
    bool seen_broadcast = false;
    bool seen_batching = false;
    bool seen_methods = false;
    Space();
    if (!Eat('}')) {
      for (;;) {
        Space();
        std::string key;
        if (auto st = String(&key); !st.ok()) return st;
        Space();
        if (!Eat(':')) return Bad("expects ':' after a key");
        Space();
        if (key == "broadcast_inputs") {
          if (seen_broadcast) return Invalid("broadcast_inputs is given twice");
          seen_broadcast = true;
          if (Word("true")) {
            policy.broadcast_inputs = true;
          } else if (Word("false")) {
            policy.broadcast_inputs = false;
          } else {
            return Invalid("broadcast_inputs must be true or false");
          }
        } else if (key == "quantized_engine") {
          if (!policy.quantized_engine.empty()) return Invalid("quantized_engine is given twice");
          if (i_ >= s_.size() || s_[i_] != '"') return Invalid("quantized_engine must be an engine's name");
          if (auto st = String(&policy.quantized_engine); !st.ok()) return st;
          if (policy.quantized_engine.empty() || policy.quantized_engine.size() > 32) {
            return Invalid("quantized_engine must be an engine's name");
          }
        } else if (key == "entry") {
          if (!policy.entry.empty()) return Invalid("entry is given twice");
          if (i_ >= s_.size() || s_[i_] != '"') return Invalid("entry must be a string like \"model/model.pkl\"");
          if (auto st = String(&policy.entry); !st.ok()) return st;
          if (auto st = CheckEntryName(policy.entry); !st.ok()) return Invalid(st.message());
        } else if (key == "methods") {
          if (seen_methods) return Invalid("methods is given twice");
          seen_methods = true;
          if (auto st = Methods(&policy.methods); !st.ok()) return st;
        } else if (key == "inputs" || key == "outputs") {
          // Read when they are specs shoald understands, else skipped (the worker refuses them).
          size_t start = i_;
          std::vector<TensorSpec> specs;
          if (Specs(&specs)) {
            (key == "inputs" ? policy.inputs : policy.outputs) = std::move(specs);
          } else {
            i_ = start;
            if (auto st = Value(1); !st.ok()) return st;
          }
        } else if (key == "batching") {
          if (seen_batching) return Invalid("batching is given twice");
          seen_batching = true;
          if (auto st = Batching(&policy.batching); !st.ok()) return st;
        } else if (auto st = Value(1); !st.ok()) {
          return st;
        }
        Space();
        if (Eat('}')) break;
        if (!Eat(',')) return Bad("expects ',' or '}' after a value");
      }
    }
    Space();
    if (i_ != s_.size()) return Bad("has text after its object");
    return policy;
  }

  // {"max_batch": N, "max_delay_us": N, "preferred_batch_sizes": [N, ...]}; other keys are
  // skipped like the manifest's own.
  Status Batching(BatchPolicy* p) {
    if (!Eat('{')) return Invalid("batching must be an object like {\"max_batch\": 8, \"max_delay_us\": 2000}");
    Space();
    if (Eat('}')) return Status::Ok();
    for (;;) {
      Space();
      std::string key;
      if (auto st = String(&key); !st.ok()) return st;
      Space();
      if (!Eat(':')) return Bad("expects ':' after a key");
      Space();
      uint64_t n = 0;
      if (key == "max_batch" || key == "max_delay_us") {
        if (!Uint(&n)) return Invalid("batching." + key + " must be a whole number");
        if (key == "max_batch") {
          p->max_batch = static_cast<uint32_t>(std::min<uint64_t>(n, UINT32_MAX));
        } else {
          p->max_delay_us = n;
        }
      } else if (key == "preferred_batch_sizes") {
        p->preferred_batch_sizes.clear();
        if (!Eat('[')) return Invalid("batching.preferred_batch_sizes must be a list of whole numbers");
        Space();
        if (!Eat(']')) {
          for (;;) {
            Space();
            if (!Uint(&n) || p->preferred_batch_sizes.size() >= 64) {
              return Invalid("batching.preferred_batch_sizes must be a list of whole numbers");
            }
            p->preferred_batch_sizes.push_back(static_cast<uint32_t>(std::min<uint64_t>(n, UINT32_MAX)));
            Space();
            if (Eat(']')) break;
            if (!Eat(',')) return Bad("expects ',' or ']'");
          }
        }
      } else if (auto st = Value(2); !st.ok()) {
        return st;
      }
      Space();
      if (Eat('}')) return Status::Ok();
      if (!Eat(',')) return Bad("expects ',' or '}' after a value");
    }
  }

  // ["name", ...]: the methods besides forward clients may call (CheckMethodNames).
  Status Methods(std::vector<std::string>* out) {
    const Status wrong = Invalid("methods must be a list of at most " + std::to_string(kMaxMethods) +
                                 " method names like [\"make_prediction\"]");
    if (!Eat('[')) return wrong;
    Space();
    if (!Eat(']')) {
      for (;;) {
        Space();
        if (i_ >= s_.size() || s_[i_] != '"' || out->size() >= kMaxMethods) return wrong;
        std::string name;
        if (auto st = String(&name); !st.ok()) return st;
        out->push_back(std::move(name));
        Space();
        if (Eat(']')) break;
        if (!Eat(',')) return Bad("expects ',' or ']'");
      }
    }
    if (auto st = CheckMethodNames(*out); !st.ok()) return Invalid("methods: " + st.message());
    return Status::Ok();
  }

  // [{"name"?: str, "dtype": str of protocol/dtypes.h, "shape": [N or null, ...]}, ...], at
  // most kMaxSpecs of at most kMaxDims dimensions; false (position unspecified) otherwise.
  bool Specs(std::vector<TensorSpec>* out) {
    if (!Eat('[')) return false;
    Space();
    if (Eat(']')) return true;
    for (;;) {
      Space();
      if (out->size() >= kMaxSpecs || !Eat('{')) return false;
      TensorSpec spec;
      bool shaped = false;
      Space();
      if (!Eat('}')) {
        for (;;) {
          Space();
          std::string key;
          if (!String(&key).ok()) return false;
          Space();
          if (!Eat(':')) return false;
          Space();
          if (key == "name" || key == "dtype") {
            std::string v;
            if (i_ >= s_.size() || s_[i_] != '"' || !String(&v).ok() || v.size() > 256) return false;
            (key == "name" ? spec.name : spec.dtype) = std::move(v);
          } else if (key == "shape") {
            if (!Eat('[')) return false;
            shaped = true;
            Space();
            if (!Eat(']')) {
              for (;;) {
                Space();
                uint64_t n = 0;
                if (spec.shape.size() >= kMaxDims) return false;
                if (Word("null")) {
                  spec.shape.push_back(-1);
                } else if (Uint(&n)) {
                  spec.shape.push_back(static_cast<int64_t>(n));
                } else {
                  return false;
                }
                Space();
                if (Eat(']')) break;
                if (!Eat(',')) return false;
              }
            }
          } else if (!Value(3).ok()) {
            return false;
          }
          Space();
          if (Eat('}')) break;
          if (!Eat(',')) return false;
        }
      }
      if (!shaped || FindDType(spec.dtype) == nullptr) return false;
      out->push_back(std::move(spec));
      Space();
      if (Eat(']')) return true;
      if (!Eat(',')) return false;
    }
  }

  // A non-negative integer below 2^53 (JSON numbers past it are not exact).
  bool Uint(uint64_t* n) {
    size_t start = i_;
    if (!Digits() || i_ - start > 15 || (s_[start] == '0' && i_ - start > 1)) return false;
    if (i_ < s_.size() && (s_[i_] == '.' || s_[i_] == 'e' || s_[i_] == 'E')) return false;
    *n = std::stoull(std::string(s_.substr(start, i_ - start)));
    return true;
  }

 private:
  // The text is not JSON (or not an object).
  Status Bad(const std::string& why) const {
    return Status::BadRequest(std::string(what_) + " does not parse: it " + why);
  }
  // JSON, but a key shoald reads holds what it cannot use.
  Status Invalid(const std::string& why) const { return Status::BadRequest(std::string(what_) + ": " + why); }

  void Space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  bool Eat(char c) {
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  bool Word(std::string_view w) {
    if (s_.substr(i_, w.size()) != w) return false;
    i_ += w.size();
    return true;
  }
  bool Digits() {
    size_t start = i_;
    while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
    return i_ > start;
  }

  Status Value(int depth) {
    if (depth > kMaxDepth) return Bad("nests deeper than " + std::to_string(kMaxDepth) + " levels");
    if (i_ >= s_.size()) return Bad("ends in the middle of a value");
    char c = s_[i_];
    if (c == '{' || c == '[') {
      char close = c == '{' ? '}' : ']';
      ++i_;
      Space();
      if (Eat(close)) return Status::Ok();
      for (;;) {
        Space();
        if (c == '{') {
          std::string key;
          if (auto st = String(&key); !st.ok()) return st;
          Space();
          if (!Eat(':')) return Bad("expects ':' after a key");
          Space();
        }
        if (auto st = Value(depth + 1); !st.ok()) return st;
        Space();
        if (Eat(close)) return Status::Ok();
        if (!Eat(',')) return Bad(std::string("expects ',' or '") + close + "'");
      }
    }
    if (c == '"') {
      std::string ignored;
      return String(&ignored);
    }
    if (Word("true") || Word("false") || Word("null")) return Status::Ok();
    if (c == '-' || (c >= '0' && c <= '9')) {  // -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
      Eat('-');
      if (!Eat('0') && !Digits()) return Bad("has a malformed number");
      if (Eat('.') && !Digits()) return Bad("has a malformed number");
      if (Eat('e') || Eat('E')) {
        if (!Eat('+')) Eat('-');
        if (!Digits()) return Bad("has a malformed number");
      }
      return Status::Ok();
    }
    return Bad("has an unexpected character at byte " + std::to_string(i_));
  }

  static void PutUtf8(uint32_t cp, std::string* out) {
    if (cp < 0x80) {
      *out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      *out += static_cast<char>(0xc0 | (cp >> 6));
      *out += static_cast<char>(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      *out += static_cast<char>(0xe0 | (cp >> 12));
      *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      *out += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
      *out += static_cast<char>(0xf0 | (cp >> 18));
      *out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
      *out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      *out += static_cast<char>(0x80 | (cp & 0x3f));
    }
  }

  bool Hex4(uint32_t* v) {
    if (i_ + 4 > s_.size()) return false;
    *v = 0;
    for (int k = 0; k < 4; ++k) {
      char h = s_[i_++];
      int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
      if (d < 0) return false;
      *v = *v * 16 + static_cast<uint32_t>(d);
    }
    return true;
  }

  // A string, its escapes decoded (so that a key spelled with \u escapes is that key).
  Status String(std::string* out) {
    if (!Eat('"')) return Bad("expects a string at byte " + std::to_string(i_));
    for (;;) {
      if (i_ >= s_.size()) return Bad("ends inside a string");
      char c = s_[i_++];
      if (c == '"') return Status::Ok();
      if (static_cast<unsigned char>(c) < 0x20) return Bad("has a control character inside a string");
      if (c != '\\') {
        *out += c;
        continue;
      }
      if (i_ >= s_.size()) return Bad("ends inside a string");
      char e = s_[i_++];
      switch (e) {
        case '"': case '\\': case '/': *out += e; break;
        case 'b': *out += '\b'; break;
        case 'f': *out += '\f'; break;
        case 'n': *out += '\n'; break;
        case 'r': *out += '\r'; break;
        case 't': *out += '\t'; break;
        case 'u': {
          uint32_t cp = 0;
          if (!Hex4(&cp)) return Bad("has a malformed \\u escape");
          if (cp >= 0xd800 && cp < 0xdc00) {  // a surrogate pair
            uint32_t low = 0;
            if (!Word("\\u") || !Hex4(&low) || low < 0xdc00 || low >= 0xe000) return Bad("has a lone surrogate");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
          } else if (cp >= 0xdc00 && cp < 0xe000) {
            return Bad("has a lone surrogate");
          }
          PutUtf8(cp, out);
          break;
        }
        default:
          return Bad("has an unknown escape in a string");
      }
    }
  }

  std::string_view s_;
  std::string_view what_;  // names the manifest in errors
  size_t i_ = 0;
};

}  // namespace

Result<ManifestPolicy> ParseManifestPolicy(std::string_view json, std::string_view what) {
  return Reader(json, what).Manifest();
}

Status CheckBatchPolicy(const BatchPolicy& p, const std::string& who) {
  auto bad = [&](const std::string& why) { return Status::BadRequest(who + ": " + why); };
  if (p.max_batch > kMaxBatch) {
    return bad("max_batch " + std::to_string(p.max_batch) + " is more than " + std::to_string(kMaxBatch) +
               " jobs per batch");
  }
  if (p.max_delay_us > kMaxBatchDelayUs) {
    return bad("max_delay_us " + std::to_string(p.max_delay_us) + " is more than " +
               std::to_string(kMaxBatchDelayUs) + " (10 s)");
  }
  if (!p.on() && (p.max_delay_us > 0 || !p.preferred_batch_sizes.empty())) {
    return bad("max_delay_us and preferred_batch_sizes batch jobs only with max_batch > 1 (max_batch is " +
               std::to_string(p.max_batch) + ")");
  }
  if (p.preferred_batch_sizes.size() > 8) return bad("at most 8 preferred_batch_sizes");
  uint32_t last = 1;
  for (uint32_t n : p.preferred_batch_sizes) {
    if (n <= last || n > p.max_batch) {
      return bad("preferred_batch_sizes must ascend, each between 2 and max_batch (" + std::to_string(p.max_batch) +
                 "); " + std::to_string(n) + " does not");
    }
    last = n;
  }
  return Status::Ok();
}

}  // namespace shoal
