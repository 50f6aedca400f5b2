// shoald's configuration file (/etc/shoal/shoald.conf): "key = value" lines, '#' comments.
// systemd/shoald.conf documents every key with its default. Command-line options given
// after --config override the file. Pure parsing, no I/O besides reading the file.
#pragma once

#include <string>

#include "shoal/status.h"
#include "supervisor/supervisor.h"

namespace shoal {

// Applies the text of a configuration file to *cfg; `origin` names it in errors.
Status ParseConfig(const std::string& text, const std::string& origin, SupervisorConfig* cfg);
Status LoadConfigFile(const std::string& path, SupervisorConfig* cfg);

}  // namespace shoal
