// shoal-http's seccomp filter and Landlock ruleset (http/confine.h), each installed in a
// forked child: what they must refuse fails there, and ordinary work goes on.
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <functional>
#include <string>
#include <thread>

#include "http/confine.h"
#include "tests/cpp/catch.h"

using namespace shoal;

namespace {

// Runs `body` in a forked child (what it installs binds that child only) and returns what
// it returned, one character per check.
std::string InChild(const std::function<std::string()>& body) {
  int pipefd[2];
  REQUIRE(pipe(pipefd) == 0);
  pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    std::string result = body();
    (void)!write(pipefd[1], result.data(), result.size());
    _exit(0);
  }
  close(pipefd[1]);
  std::string result;
  char buf[64];
  for (ssize_t n; (n = read(pipefd[0], buf, sizeof(buf))) > 0;) result.append(buf, static_cast<size_t>(n));
  close(pipefd[0]);
  int status = 0;
  waitpid(child, &status, 0);
  return result;
}

}  // namespace

TEST_CASE("the HTTP front's filter refuses new sockets, io_uring, exec and signals to others", "[confine]") {
#ifndef SHOAL_HAVE_SECCOMP
  WARN("built without libseccomp: nothing to test");
  return;
#endif
  std::string result = InChild([] {
    // A thread made before the filter: TSYNC must cover it too.
    int thread_errno = 0;
    bool go = false;
    std::thread early([&] {
      while (!__atomic_load_n(&go, __ATOMIC_ACQUIRE)) usleep(1000);
      int s = socket(AF_UNIX, SOCK_STREAM, 0);
      thread_errno = s < 0 ? errno : 0;
    });
    std::string r(7, 'n');
    r[0] = Confine().ok() ? 'y' : 'n';
    __atomic_store_n(&go, true, __ATOMIC_RELEASE);
    early.join();
    r[1] = thread_errno == EPERM ? 'y' : 'n';
    r[2] = socket(AF_INET, SOCK_STREAM, 0) < 0 && errno == EPERM ? 'y' : 'n';
    r[3] = syscall(SYS_io_uring_setup, 8, nullptr) < 0 && errno == EPERM ? 'y' : 'n';
    r[4] = kill(getppid(), 0) < 0 && errno == EPERM ? 'y' : 'n';
    char* argv[] = {const_cast<char*>("/bin/true"), nullptr};
    r[5] = execv("/bin/true", argv) < 0 && errno == EPERM ? 'y' : 'n';
    r[6] = kill(getpid(), 0) == 0 ? 'y' : 'n';  // itself: allowed
    return r;
  });
  REQUIRE(result.size() == 7);
  CHECK(result[0] == 'y');  // installed
  CHECK(result[1] == 'y');  // a thread that existed before
  CHECK(result[2] == 'y');  // socket
  CHECK(result[3] == 'y');  // io_uring_setup
  CHECK(result[4] == 'y');  // a signal to the parent (shoald)
  CHECK(result[5] == 'y');  // execve
  CHECK(result[6] == 'y');  // a signal to itself
}

TEST_CASE("the HTTP front's Landlock ruleset closes the filesystem, not the descriptors it holds", "[confine]") {
  char dir[] = "/tmp/shoal-confine-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  const std::string kept = std::string(dir) + "/kept";
  int fd = open(kept.c_str(), O_CREAT | O_RDWR, 0600);
  REQUIRE(fd >= 0);
  std::string result = InChild([&] {
    std::string r(7, 'n');
    int abi = -1;
    r[0] = ConfineFilesystem(&abi).ok() ? 'y' : 'n';
    r[1] = static_cast<char>('0' + abi);
    // A thread started afterwards is bound too.
    int thread_errno = 0;
    std::thread later([&] { thread_errno = open("/etc/hostname", O_RDONLY) < 0 ? errno : 0; });
    later.join();
    r[2] = thread_errno == EACCES ? 'y' : 'n';
    r[3] = open("/etc/passwd", O_RDONLY) < 0 && errno == EACCES ? 'y' : 'n';
    r[4] = open((std::string(dir) + "/new").c_str(), O_CREAT | O_WRONLY, 0600) < 0 && errno == EACCES ? 'y' : 'n';
    r[5] = unlink(kept.c_str()) < 0 && errno == EACCES ? 'y' : 'n';
    r[6] = write(fd, "x", 1) == 1 ? 'y' : 'n';  // open before: still usable
    return r;
  });
  REQUIRE(result.size() == 7);
  close(fd);
  unlink(kept.c_str());
  rmdir(dir);
  CHECK(result[0] == 'y');
  if (result[1] == '0') {
    WARN("this kernel has no Landlock: nothing enforced, nothing more to test");
    return;
  }
  CHECK(result[2] == 'y');  // a thread started after it
  CHECK(result[3] == 'y');  // reading a file
  CHECK(result[4] == 'y');  // making one
  CHECK(result[5] == 'y');  // removing one
  CHECK(result[6] == 'y');  // a descriptor open before
}
