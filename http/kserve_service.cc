// The v2 REST routes (http/kserve_service.h).
#include "http/kserve_service.h"

#include <boost/asio/post.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>

#include "http/kserve_codec.h"
#include "protocol/model_name.h"
#include "tensors/tree.h"

namespace shoal {

using json = nlohmann::json;

namespace {

HttpServer::Reply Json(unsigned status, const json& body) {
  HttpServer::Reply r;
  r.status = status;
  r.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
  return r;
}

HttpServer::Reply Error(unsigned status, const std::string& message) {
  HttpServer::Reply r;
  r.status = status;
  r.body = V2Error(message);
  return r;
}

HttpServer::Reply Error(const Status& st) { return Error(KServeService::HttpStatus(st.code()), st.ToString()); }

HttpServer::Reply MethodNotAllowed(const std::string& path, const std::string& allowed) {
  auto r = Error(405, path + " takes " + allowed);
  r.allow = allowed;
  return r;
}

// %XX escapes of one path segment; nullopt for a bad escape.
std::optional<std::string> Unescape(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    if (i + 2 >= s.size() || !std::isxdigit(static_cast<unsigned char>(s[i + 1])) ||
        !std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      return std::nullopt;
    }
    out += static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16));
    i += 2;
  }
  return out;
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> parts;
  size_t at = 0;
  while (at <= s.size()) {
    size_t slash = s.find('/', at);
    if (slash == std::string::npos) slash = s.size();
    parts.push_back(s.substr(at, slash - at));
    at = slash + 1;
  }
  return parts;
}

// shoal's name for a v2 model and version: "name:version", or the name (the newest version).
std::string ShoalName(const std::string& model, const std::string& version) {
  return version.empty() ? model : model + ":" + version;
}

// The loaded models that `model` (and `version`) names: "m" and every "m:*", or "m:v".
std::vector<ModelInfo> Matching(const std::vector<ModelInfo>& models, const std::string& model,
                                const std::string& version) {
  std::vector<ModelInfo> out;
  for (const auto& m : models) {
    if (version.empty() ? (m.name == model || m.name.rfind(model + ":", 0) == 0) : m.name == ShoalName(model, version)) {
      out.push_back(m);
    }
  }
  return out;
}

// Of `found` (Matching, non-empty), the model an infer on `model` without a version runs, as
// shoald resolves it (ModelRegistry::Resolve): the plain name itself, else the newest
// version, one that is ready before one that is not.
const ModelInfo& Serving(const std::vector<ModelInfo>& found, const std::string& model) {
  const ModelInfo* best = nullptr;
  for (const auto& m : found) {
    if (m.name == model) return m;
    auto newer = [&] {
      if (m.ready != best->ready) return m.ready;
      return NewerVersion(m.name.substr(model.size() + 1), best->name.substr(model.size() + 1));
    };
    if (best == nullptr || newer()) best = &m;
  }
  return *best;
}

std::string NotFound(const std::string& model, const std::string& version) {
  return "model '" + ShoalName(model, version) + "' is not loaded (GET /v2/models/... of a loaded one; shoal loads "
         "models through its Unix socket or model_repository, not over HTTP)";
}

}  // namespace

KServeService::KServeService(Client* client, size_t threads) : client_(client), pool_(threads), probes_(2) {}

KServeService::~KServeService() { Stop(); }

void KServeService::Stop() {
  if (stopped_) return;
  stopped_ = true;
  pool_.join();
  probes_.join();
}

unsigned KServeService::HttpStatus(Code code) {
  switch (code) {
    case Code::kOk: return 200;
    case Code::kBadRequest: return 400;
    case Code::kModelNotFound: return 404;
    case Code::kTimeout: return 504;
    case Code::kOverloaded:
    case Code::kArenaFull:  // shoal-http's own shared memory: busy, not the client's fault
    case Code::kUnavailable: return 503;
    default: return 500;  // the model's error, a crash, a full arena, shoal's own
  }
}

HttpServer::Reply KServeService::RefusedReply(unsigned status, std::string message) { return Error(status, message); }

void KServeService::Handle(HttpServer::Request request, HttpServer::Respond respond) {
  const std::string infer = "/infer";
  bool is_infer = request.path.size() >= infer.size() &&
                  request.path.compare(request.path.size() - infer.size(), infer.size(), infer) == 0;
  boost::asio::post(is_infer ? pool_ : probes_, [this, request = std::move(request), respond = std::move(respond)] {
    HttpServer::Reply reply;
    try {
      reply = Route(request);
    } catch (const std::exception& e) {  // libtorch and json throw; a request never takes the front down
      reply = Error(500, std::string("internal error: ") + e.what());
    }
    respond(std::move(reply));
  });
}

HttpServer::Reply KServeService::Route(const HttpServer::Request& request) {
  const std::string& path = request.path;
  bool get = request.method == "GET" || request.method == "HEAD";
  if (path == "/v2" || path == "/v2/") {
    if (!get) return MethodNotAllowed(path, "GET, HEAD");
    return Json(200, {{"name", "shoal"}, {"version", "0.1.0"}, {"extensions", {"binary_tensor_data"}}});
  }
  if (path == "/v2/health/live" || path == "/v2/health/ready") {
    if (!get) return MethodNotAllowed(path, "GET, HEAD");
    auto health = client_->Health();
    if (!health.ok()) return Error(503, "shoald does not answer: " + health.status().ToString());
    if (path == "/v2/health/live") return Json(200, {{"live", true}});
    bool ready = health->ready && !health->stopping;
    if (ready) return Json(200, {{"ready", true}});
    auto r = Error(503, health->stopping ? "shoald is stopping (draining its jobs)"
                                         : "not ready: a loaded model has no live worker holding it yet");
    return r;
  }
  const std::string prefix = "/v2/models/";
  if (path.rfind(prefix, 0) == 0) return ModelRoute(request, path.substr(prefix.size()));
  return Error(404, "no route " + path + " (the v2 API: /v2, /v2/health/live, /v2/health/ready, "
                    "/v2/models/NAME[/versions/V][/ready|/infer])");
}

HttpServer::Reply KServeService::ModelRoute(const HttpServer::Request& request, const std::string& rest) {
  std::vector<std::string> parts;
  for (const auto& raw : Split(rest)) {
    auto part = Unescape(raw);
    if (!part) return Error(400, "bad %-escape in " + request.path);
    parts.push_back(*part);
  }
  if (parts.empty() || parts[0].empty()) return Error(400, "no model name in " + request.path);
  std::string model = parts[0], version, action;
  size_t at = 1;
  if (at < parts.size() && parts[at] == "versions") {
    if (at + 1 >= parts.size() || parts[at + 1].empty()) return Error(400, "no version in " + request.path);
    version = parts[at + 1];
    at += 2;
  }
  if (at < parts.size()) action = parts[at++];
  if (at != parts.size() || (action != "" && action != "ready" && action != "infer")) {
    return Error(404, "no route " + request.path + " (/v2/models/NAME[/versions/V][/ready|/infer])");
  }
  bool get = request.method == "GET" || request.method == "HEAD";
  if (action == "infer") {
    if (request.method != "POST") return MethodNotAllowed(request.path, "POST");
    return Infer(model, version, request);
  }
  if (!get) return MethodNotAllowed(request.path, "GET, HEAD");
  return action == "ready" ? ModelReady(model, version) : Metadata(model, version);
}

HttpServer::Reply KServeService::Metadata(const std::string& model, const std::string& version) {
  auto models = client_->Models();
  if (!models.ok()) return Error(models.status());
  auto found = Matching(*models, model, version);
  if (found.empty()) return Error(404, NotFound(model, version));
  // Oldest first, newest last, by the rule that picks the one a plain name runs (10 after 2).
  std::vector<std::string> ranked;
  for (const auto& m : found) {
    auto colon = m.name.find(':');
    if (colon != std::string::npos) ranked.push_back(m.name.substr(colon + 1));
  }
  std::sort(ranked.begin(), ranked.end(), [](const std::string& a, const std::string& b) { return NewerVersion(b, a); });
  json versions = ranked;
  // shoal runs Python: a model's inputs are its forward's arguments, not declared tensors,
  // unless its manifest declares them (shoal.export with example inputs): then positional
  // INPUT__N, and outputs named as the result will name them.
  const ModelInfo& shown = version.empty() ? Serving(found, model) : found.front();
  auto specs = [](const std::vector<ModelInfo::Tensor>& tensors, bool inputs) {
    json out = json::array();
    for (size_t i = 0; i < tensors.size(); ++i) {
      const auto& t = tensors[i];
      auto type = ScalarTypeOf(t.dtype);
      std::string name = inputs ? "INPUT__" + std::to_string(i)
                                : !t.name.empty() ? t.name
                                                  : "output__" + std::to_string(i);
      out.push_back({{"name", name}, {"datatype", type ? V2DataType(*type) : std::string()}, {"shape", t.shape}});
    }
    return out;
  };
  return Json(200, {{"name", model},
                    {"versions", versions},
                    {"platform", "shoal_" + (shown.engine.empty() ? "python" : shown.engine)},
                    {"inputs", specs(shown.inputs, true)},
                    {"outputs", specs(shown.outputs, false)}});
}

HttpServer::Reply KServeService::ModelReady(const std::string& model, const std::string& version) {
  auto models = client_->Models();
  if (!models.ok()) return Error(models.status());
  auto found = Matching(*models, model, version);
  if (found.empty()) return Error(404, NotFound(model, version));
  for (const auto& m : found) {
    if (m.ready) return Json(200, {{"name", model}, {"ready", true}});
  }
  return Error(503, "model '" + ShoalName(model, version) + "' is loaded but not ready (no live worker holds it yet)");
}

HttpServer::Reply KServeService::Infer(const std::string& model, const std::string& version,
                                       const HttpServer::Request& request) {
  std::optional<size_t> header_length;
  if (auto h = request.Header("inference-header-content-length"); !h.empty()) {
    char* end = nullptr;
    errno = 0;
    unsigned long long n = std::strtoull(h.c_str(), &end, 10);
    if (errno != 0 || end == h.c_str() || *end != '\0' || h[0] == '-') {
      return Error(400, "Inference-Header-Content-Length must be a byte count, not '" + h + "'");
    }
    header_length = static_cast<size_t>(n);
  }
  const std::string name = ShoalName(model, version);
  size_t json_bytes = std::min(request.body.size(), header_length.value_or(request.body.size()));
  {
    std::unique_lock<std::mutex> lock(json_mu_);
    json_cv_.wait(lock, [&] { return json_bytes_ == 0 || json_bytes_ + json_bytes <= kJsonBudget; });
    json_bytes_ += json_bytes;
  }
  auto parsed = ParseV2Request(request.body, header_length, [this](at::IntArrayRef shape, at::ScalarType dtype) {
    return client_->Empty(shape, dtype);
  });
  {
    std::lock_guard<std::mutex> lock(json_mu_);
    json_bytes_ -= json_bytes;
  }
  json_cv_.notify_all();
  if (!parsed.ok()) {
    const Status& st = parsed.status();
    return Error(HttpStatus(st.code()), "infer on model '" + name + "': " + st.message());
  }
  InferOptions options;
  options.host_outputs = true;
  if (parsed->timeout_ms) options.timeout = std::chrono::milliseconds(*parsed->timeout_ms);
  auto out = client_->Infer(name, parsed->args, parsed->kwargs, options);
  if (!out.ok()) return Error(out.status());
  auto response = EncodeV2Response(model, version, *parsed, *out);
  if (!response.ok()) return Error(response.status());
  HttpServer::Reply r;
  r.body = std::move(response->body);
  if (response->header_length) {
    r.content_type = "application/octet-stream";
    r.headers["Inference-Header-Content-Length"] = std::to_string(*response->header_length);
  }
  return r;
}

}  // namespace shoal
