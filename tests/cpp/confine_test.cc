// shoal-http's seccomp filter (http/confine.h), installed in a forked child: the calls it
// must refuse fail with EPERM there, and ordinary work goes on.
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <thread>

#include "http/confine.h"
#include "tests/cpp/catch.h"

using namespace shoal;

TEST_CASE("the HTTP front's filter refuses new sockets, io_uring, exec and signals to others", "[confine]") {
#ifndef SHOAL_HAVE_SECCOMP
  WARN("built without libseccomp: nothing to test");
  return;
#endif
  int pipefd[2];
  REQUIRE(pipe(pipefd) == 0);
  pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // A thread made before the filter: TSYNC must cover it too.
    int thread_errno = 0;
    bool go = false;
    std::thread early([&] {
      while (!__atomic_load_n(&go, __ATOMIC_ACQUIRE)) usleep(1000);
      int s = socket(AF_UNIX, SOCK_STREAM, 0);
      thread_errno = s < 0 ? errno : 0;
    });
    char result[8] = {};
    result[0] = Confine().ok() ? 'y' : 'n';
    __atomic_store_n(&go, true, __ATOMIC_RELEASE);
    early.join();
    result[1] = thread_errno == EPERM ? 'y' : 'n';
    result[2] = socket(AF_INET, SOCK_STREAM, 0) < 0 && errno == EPERM ? 'y' : 'n';
    result[3] = syscall(SYS_io_uring_setup, 8, nullptr) < 0 && errno == EPERM ? 'y' : 'n';
    result[4] = kill(getppid(), 0) < 0 && errno == EPERM ? 'y' : 'n';
    char* argv[] = {const_cast<char*>("/bin/true"), nullptr};
    result[5] = execv("/bin/true", argv) < 0 && errno == EPERM ? 'y' : 'n';
    result[6] = kill(getpid(), 0) == 0 ? 'y' : 'n';  // itself: allowed
    (void)!write(pipefd[1], result, 7);
    _exit(0);
  }
  close(pipefd[1]);
  char result[8] = {};
  REQUIRE(read(pipefd[0], result, 7) == 7);
  close(pipefd[0]);
  int status = 0;
  waitpid(child, &status, 0);
  CHECK(result[0] == 'y');  // installed
  CHECK(result[1] == 'y');  // a thread that existed before
  CHECK(result[2] == 'y');  // socket
  CHECK(result[3] == 'y');  // io_uring_setup
  CHECK(result[4] == 'y');  // a signal to the parent (shoald)
  CHECK(result[5] == 'y');  // execve
  CHECK(result[6] == 'y');  // a signal to itself
}
