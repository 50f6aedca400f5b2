// shoal-infer-cpp: the C++ client in a few lines. Runs MODEL on a tensor of ones of the
// given shape and prints the result.   usage: shoal-infer-cpp [--socket PATH] MODEL DIM...
#include <iostream>

#include "shoal/client.h"

int main(int argc, char** argv) {
  std::string socket;
  int i = 1;
  if (argc > 2 && std::string(argv[1]) == "--socket") {
    socket = argv[2];
    i = 3;
  }
  if (i >= argc) {
    std::cerr << "usage: shoal-infer-cpp [--socket PATH] MODEL DIM...\n";
    return 2;
  }
  std::string model = argv[i++];
  std::vector<int64_t> shape;
  for (; i < argc; ++i) shape.push_back(std::stoll(argv[i]));
  auto client = shoal::Client::Connect(socket);
  if (!client.ok()) {
    std::cerr << client.status().ToString() << "\n";
    return 1;
  }
  auto x = (*client)->Empty(shape);
  if (!x.ok()) {
    std::cerr << x.status().ToString() << "\n";
    return 1;
  }
  x->fill_(1.0);
  auto y = (*client)->Infer(model, {*x});
  if (!y.ok()) {
    std::cerr << y.status().ToString() << "\n";
    return 1;
  }
  std::cout << *y << "\n";
  return 0;
}
