// The Prometheus text exposition format (supervisor/metrics.h) and the addresses the
// metrics server may listen on (http/listen_address.h).
#include "supervisor/metrics.h"

#include <limits>
#include <sstream>

#include "http/listen_address.h"
#include "supervisor/options.h"
#include "tests/cpp/catch.h"

using namespace shoal;

namespace {

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

bool Has(const std::string& text, const std::string& line) {
  for (const auto& l : Lines(text)) {
    if (l == line) return true;
  }
  return false;
}

}  // namespace

TEST_CASE("label values escape backslash, double quote and newline, and nothing else", "[metrics]") {
  CHECK(EscapeLabelValue("plain:1") == "plain:1");
  CHECK(EscapeLabelValue("a\"b\\c\nd") == "a\\\"b\\\\c\\nd");
  CHECK(EscapeLabelValue("tab\there 'quoted' é") == "tab\there 'quoted' é");
  Exposition out;
  out.Sample("x_total", {{"model", "q\"uo\\te\n"}, {"code", "OK"}}, 3);
  CHECK(out.text() == "x_total{model=\"q\\\"uo\\\\te\\n\",code=\"OK\"} 3\n");
}

TEST_CASE("HELP texts escape backslash and newline; a family opens with HELP then TYPE", "[metrics]") {
  CHECK(EscapeHelp("a \"quoted\" \\ path\nsecond line") == "a \"quoted\" \\\\ path\\nsecond line");
  Exposition out;
  out.Family("shoal_x_total", "counter", "Things.\nMore");
  out.Sample("shoal_x_total", {}, 0);
  CHECK(out.text() == "# HELP shoal_x_total Things.\\nMore\n# TYPE shoal_x_total counter\nshoal_x_total 0\n");
}

TEST_CASE("sample values: integers plainly, fractions exactly, NaN and infinities by name", "[metrics]") {
  CHECK(FormatValue(0) == "0");
  CHECK(FormatValue(18957376512.0) == "18957376512");
  CHECK(FormatValue(0.25) == "0.25");
  CHECK(FormatValue(0.0001) == "0.0001");
  CHECK(FormatValue(0.00001) == "1e-05");
  CHECK(FormatValue(-3) == "-3");
  CHECK(std::stod(FormatValue(0.1 + 0.2)) == 0.1 + 0.2);
  CHECK(FormatValue(std::numeric_limits<double>::quiet_NaN()) == "NaN");
  CHECK(FormatValue(std::numeric_limits<double>::infinity()) == "+Inf");
  CHECK(FormatValue(-std::numeric_limits<double>::infinity()) == "-Inf");
}

TEST_CASE("a histogram's buckets are cumulative, end in +Inf equal to _count, with _sum", "[metrics]") {
  Histogram h({0.1, 1, 10});
  for (double v : {0.05, 0.1, 0.5, 1.0, 2.0, 20.0}) h.Observe(v);  // a value on a bound counts in it (le)
  Exposition out;
  out.Sample("t_seconds", {{"model", "m"}}, h);
  CHECK(out.text() ==
        "t_seconds_bucket{model=\"m\",le=\"0.1\"} 2\n"
        "t_seconds_bucket{model=\"m\",le=\"1\"} 4\n"
        "t_seconds_bucket{model=\"m\",le=\"10\"} 5\n"
        "t_seconds_bucket{model=\"m\",le=\"+Inf\"} 6\n"
        "t_seconds_sum{model=\"m\"} " + FormatValue(0.05 + 0.1 + 0.5 + 1.0 + 2.0 + 20.0) + "\n"
        "t_seconds_count{model=\"m\"} 6\n");
  Histogram empty;
  Exposition none;
  none.Sample("e", {}, empty);
  auto lines = Lines(none.text());
  REQUIRE(lines.size() == kJobSecondsBuckets.size() + 3);
  CHECK(lines[kJobSecondsBuckets.size()] == "e_bucket{le=\"+Inf\"} 0");
  CHECK(lines.back() == "e_count 0");
}

TEST_CASE("Metrics renders requests by model and code, job times and crash loops, each family once", "[metrics]") {
  Metrics m;
  m.Answered("add", Code::kOk);
  m.Answered("add", Code::kOk);
  m.Answered("add", Code::kModelError);
  m.Answered("", Code::kModelNotFound);
  m.Waited("add", 0.002);
  m.Ran("add", 0.3);
  m.CrashLoop("crashy", CrashVerdict::kCounted);
  m.CrashLoop("crashy", CrashVerdict::kClientRefused);
  Exposition out;
  m.Render(&out);
  const std::string& t = out.text();
  CHECK(Has(t, "# TYPE shoal_requests_total counter"));
  CHECK(Has(t, "shoal_requests_total{model=\"add\",code=\"OK\"} 2"));
  CHECK(Has(t, "shoal_requests_total{model=\"add\",code=\"MODEL_ERROR\"} 1"));
  CHECK(Has(t, "shoal_requests_total{model=\"\",code=\"MODEL_NOT_FOUND\"} 1"));
  CHECK(Has(t, "# TYPE shoal_queue_duration_seconds histogram"));
  CHECK(Has(t, "shoal_queue_duration_seconds_bucket{model=\"add\",le=\"0.001\"} 0"));
  CHECK(Has(t, "shoal_queue_duration_seconds_bucket{model=\"add\",le=\"0.0025\"} 1"));
  CHECK(Has(t, "shoal_queue_duration_seconds_count{model=\"add\"} 1"));
  CHECK(Has(t, "shoal_compute_duration_seconds_sum{model=\"add\"} 0.3"));
  CHECK(Has(t, "shoal_crash_loops_total{model=\"crashy\",verdict=\"client_refused\"} 1"));
  CHECK(Has(t, "shoal_crash_loops_total{model=\"crashy\",verdict=\"model_failed\"} 0"));
  // A model that never waited has no histogram series (the family is still declared).
  CHECK(t.find("shoal_queue_duration_seconds_count{model=\"crashy\"}") == std::string::npos);
  int types = 0;
  for (const auto& l : Lines(t)) types += l.rfind("# TYPE ", 0) == 0;
  CHECK(types == 5);  // requests, queue and compute times, batch sizes, crash loops
  m.Batched("add", 3);
  Exposition again;
  m.Render(&again);
  CHECK(Has(again.text(), "shoal_batch_size_bucket{model=\"add\",le=\"2\"} 0"));
  CHECK(Has(again.text(), "shoal_batch_size_bucket{model=\"add\",le=\"4\"} 1"));
  CHECK(again.text().find("shoal_batch_size_count{model=\"crashy\"}") == std::string::npos);
}

TEST_CASE("metrics_address takes a Unix socket path, loopback, or every interface written out", "[metrics]") {
  auto unix_socket = ParseListenAddress("/run/shoal/metrics.sock", "metrics_address");
  REQUIRE(unix_socket.ok());
  CHECK(unix_socket->unix_socket());
  CHECK(unix_socket->ToString() == "/run/shoal/metrics.sock");
  auto v4 = ParseListenAddress("127.0.0.1:9400", "metrics_address");
  REQUIRE(v4.ok());
  CHECK(v4->ip == "127.0.0.1");
  CHECK(v4->port == 9400);
  CHECK_FALSE(v4->every_interface);
  CHECK(ParseListenAddress("127.0.0.53:1", "m").ok());  // all of 127/8 is loopback
  auto v6 = ParseListenAddress("[::1]:9400", "metrics_address");
  REQUIRE(v6.ok());
  CHECK(v6->ToString() == "[::1]:9400");
  auto all = ParseListenAddress("0.0.0.0:9400", "metrics_address");
  REQUIRE(all.ok());
  CHECK(all->every_interface);
  CHECK(ParseListenAddress("[::]:9400", "metrics_address")->every_interface);
}

TEST_CASE("metrics_address refuses network addresses, host names, bad ports, relative paths", "[metrics]") {
  auto lan = ParseListenAddress("10.1.2.3:9400", "metrics_address");
  CHECK(lan.status().code() == Code::kBadRequest);
  CHECK(lan.status().message().find("metrics_address '10.1.2.3:9400' is not a loopback address") == 0);
  CHECK(lan.status().message().find("0.0.0.0:PORT") != std::string::npos);
  CHECK_FALSE(ParseListenAddress("[2001:db8::1]:9400", "m").ok());
  CHECK(ParseListenAddress("localhost:9400", "m").status().message().find("host names are not resolved") !=
        std::string::npos);
  CHECK(ParseListenAddress("127.0.0.1", "m").status().message().find("names no port") != std::string::npos);
  for (const char* bad : {"127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:http", "127.0.0.1:", "::1:9400",
                          "[::1]9400", "metrics.sock", ""}) {
    CAPTURE(bad);
    CHECK(ParseListenAddress(bad, "m").status().code() == Code::kBadRequest);
  }
}

TEST_CASE("the option table checks metrics_address in the file and on the command line alike", "[metrics]") {
  SupervisorConfig cfg;
  CHECK(cfg.metrics_address.empty());  // off unless set
  REQUIRE(ApplySetting({"metrics_address", "127.0.0.1:9400", "", 0}, &cfg).ok());
  CHECK(cfg.metrics_address == "127.0.0.1:9400");
  auto file = ApplySetting({"metrics_address", "192.168.1.5:9400", "/etc/shoal/shoald.conf", 7}, &cfg);
  CHECK(file.message().find("/etc/shoal/shoald.conf:7: metrics_address '192.168.1.5:9400' is not a loopback") == 0);
  const char* argv[] = {"shoald", "--metrics-address", "example.com:80"};
  auto cli = ParseCommandLine(3, argv);
  REQUIRE_FALSE(cli.ok());
  CHECK(cli.status().message().find("--metrics-address 'example.com:80'") == 0);
}
