// shoald: the shoal supervisor daemon. See docs/architecture.md.
// Reads its options (supervisor/options.h: the command line and the configuration file,
// one table), opens and checks the archives it is to load, and runs the Supervisor's loop.
#include <spdlog/spdlog.h>

#include <iostream>
#include <string>

#include "protocol/paths.h"
#include "protocol/spin.h"
#include "supervisor/config.h"
#include "supervisor/event_loop.h"
#include "supervisor/options.h"
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
  const int cpus = shoal::UsableCpus();
  const auto spin = shoal::StartupSpinBudget(cfg->spin_us, cpus, cfg->workers * cfg->interpreters);
  shoal::SetSpinBudget(spin);
  spdlog::info("receivers poll {} us before they sleep (spin_us {}, {} CPUs, {} worker interpreters)", spin.count(),
               cfg->spin_us == shoal::kAutoSpin ? std::string("auto") : std::to_string(cfg->spin_us), cpus,
               cfg->workers * cfg->interpreters);
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
