// shoald: the shoal supervisor daemon. See docs/architecture.md.
// Reads its options (supervisor/options.h: the command line and the configuration file,
// one table), opens and checks the archives it is to load, and runs the Supervisor's loop.
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <iostream>
#include <string>

#include "protocol/paths.h"
#include "protocol/spin.h"
#include "supervisor/config.h"
#include "supervisor/event_loop.h"
#include "supervisor/options.h"
#include "supervisor/own_cgroup.h"
#include "supervisor/supervisor.h"
#include "supervisor/systemd.h"

int main(int argc, char** argv) {
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e shoald[%P] %l: %v");
  auto cli = shoal::ParseCommandLine(argc, argv);
  if (!cli.ok()) {
    std::cerr << "shoald: " << cli.status().message() << "\n";
    return 2;
  }
  if (cli->help) {
    std::cout << shoal::HelpText();
    return 0;
  }
  auto cfg = shoal::LoadConfig(*cli);
  if (!cfg.ok()) {
    std::cerr << "shoald: " << cfg.status().message() << "\n";
    return 2;
  }
  spdlog::set_level(spdlog::level::from_str(cfg->log_level));
  if (auto fd = shoal::TakeListenFd()) cfg->listen_fd = *fd;
  // shoald's own loads: it opens these archives itself, now, and workers load from the
  // files it holds.
  auto models = shoal::OpenConfiguredModels(*cfg);
  if (!models.ok()) {
    std::cerr << "shoald: " << models.status().message() << "\n";
    return 2;
  }
  // Before any process starts: the zygote and workers inherit the budget.
  const auto spin = shoal::StartupSpinBudget(cfg->spin_us, shoal::UsableCpus(), cfg->workers * cfg->interpreters);
  if (spin.bad_environment) {
    spdlog::warn("SHOAL_SPIN_US='{}' is not a number of microseconds in 0..{}: receivers do not poll",
                 std::getenv("SHOAL_SPIN_US"), shoal::kMaxSpinUs);
  }
  spdlog::info("receivers poll {} us before they sleep ({})", spin.budget.count(), spin.why);
  shoal::SetSpinBudget(spin.budget);
  boost::asio::io_context io;
  shoal::Supervisor sup(io, std::move(*cfg));
  if (auto st = sup.Start(std::move(*models)); !st.ok()) {
    spdlog::critical("{}", st.ToString());
    return 1;
  }
  shoal::RunSpinning(io, shoal::SpinBudget());
  spdlog::info("shoald stopped");
  return sup.exit_code();
}
