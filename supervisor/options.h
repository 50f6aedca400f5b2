// The table of shoald's options, and the command line parsed from it.
//
// Each option has one entry: its configuration-file key (the flag is the same with '-'
// for '_': max_queue, --max-queue), the kind and bounds of its value, its default (that of
// SupervisorConfig), whether SIGHUP applies it, and its help text. ApplySetting is the one
// place where a value is checked, whether the file or the command line gave it, so both
// accept and refuse the same values with the same words. Boost.Program_options reads the
// command line and prints --help from the same table.
// Thread-safety: the table is immutable; everything here may be called from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "shoal/status.h"
#include "supervisor/config.h"

namespace shoal {

enum class OptionKind {
  kNumber,    // a decimal integer within [min, max]
  kText,      // any text, empty included
  kYesNo,     // yes | no (on the command line also --no-FLAG)
  kLogLevel,  // trace | debug | info | warn | error | critical | off
  kModel,     // NAME=ARCHIVE, repeatable: every one is loaded at start-up
  kAddress,   // where an HTTP front listens (http/listen_address.h); empty: off
};

// A value that passed its option's checks.
struct OptionValue {
  uint64_t number = 0;  // kNumber
  bool automatic = false;  // kNumber of an option that takes "auto": worked out at start-up
  bool yes = false;     // kYesNo
  std::string text;     // kText, kLogLevel, kAddress; kModel: the archive
  std::string name;     // kModel: the model's name
};

struct Option {
  const char* key;
  OptionKind kind;
  const char* arg;  // the value's name in --help
  bool reloadable;  // SIGHUP applies it; otherwise a change waits for a restart
  const char* help;
  uint64_t min = 0, max = 0;           // kNumber
  const char* default_text = nullptr;  // for defaults worked out at start-up; else get(SupervisorConfig{})
  // The setting in a configuration, as text: "2", "yes", "a=/m/a.pt, b=/m/b.pt".
  std::string (*get)(const SupervisorConfig&) = nullptr;
  // Stores a checked value (kModel: adds one more model).
  void (*set)(SupervisorConfig*, const OptionValue&) = nullptr;
  // Copies the setting from one configuration into another.
  void (*keep)(const SupervisorConfig& from, SupervisorConfig* to) = nullptr;
  bool takes_auto = false;  // kNumber: "auto" is a value too (OptionValue::automatic)

  std::string Flag() const;  // "--max-queue"
};

// Every option, in the order --help lists them.
const std::vector<Option>& Options();
// By configuration-file key; nullptr for none.
const Option* FindOption(const std::string& key);

// Checks s.value against its option and stores it in *cfg. Errors name the setting as it
// was written: "FILE:LINE: workers ..." or "--workers ...".
Status ApplySetting(const Setting& s, SupervisorConfig* cfg);

// shoald's arguments (argv[0] is skipped). Every value is checked here already, so a bad
// one is reported by the flag that carries it, before any file is read. A relative
// archive path of --model is made absolute against the current directory.
Result<CommandLine> ParseCommandLine(int argc, const char* const* argv);

// `shoald --help`.
std::string HelpText();

}  // namespace shoal
