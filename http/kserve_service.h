// KServeService: the KServe v2 REST API (Open Inference Protocol; docs/http.md) over one
// shoal Client: server and model health, model metadata, infer. Routes an HttpServer
// request, does the blocking part (calls into shoald, encoding) on a pool of its own
// threads, and answers through the request's Respond. Load and unload have no route: the
// HTTP front has no write access to models (and shoald never takes them from it anyway:
// its session is never an admin's).
// Infer runs on a pool of `threads`; health, metadata and the rest on a pool of 2 of their own,
// so that probes are answered while every infer thread waits on a slow model.
// Owns the thread pools; borrows the Client, which must outlive it.
// Thread-safety: Handle on the server's loop; Stop from the thread that owns the service.
#pragma once

#include <boost/asio/thread_pool.hpp>
#include <condition_variable>
#include <mutex>
#include <string>

#include "http/server.h"
#include "shoal/client.h"

namespace shoal {

class KServeService {
 public:
  KServeService(Client* client, size_t threads);
  ~KServeService();  // Stop()
  KServeService(const KServeService&) = delete;
  KServeService& operator=(const KServeService&) = delete;

  // An HttpServer::Handler: queues the request on the pool.
  void Handle(HttpServer::Request request, HttpServer::Respond respond);
  // Waits for the requests being handled; later ones are not.
  void Stop();

  // The HTTP status for a shoal error code.
  static unsigned HttpStatus(Code code);
  // A request the server refused before it was read (HttpServer::ErrorReply): the v2 error
  // body, as every other error.
  static HttpServer::Reply RefusedReply(unsigned status, std::string message);
  // The answer to one request (a pool thread).
  HttpServer::Reply Route(const HttpServer::Request& request);

 private:
  HttpServer::Reply ModelRoute(const HttpServer::Request& request, const std::string& rest);
  HttpServer::Reply Metadata(const std::string& model, const std::string& version);
  HttpServer::Reply ModelReady(const std::string& model, const std::string& version);
  HttpServer::Reply Infer(const std::string& model, const std::string& version, const HttpServer::Request& request);

  Client* client_;
  boost::asio::thread_pool pool_;    // infer: decoding, the job, encoding
  boost::asio::thread_pool probes_;  // everything else: health probes never wait behind slow jobs
  // Bytes of JSON being parsed at once (a parse takes ~20x its text): at most kJsonBudget,
  // one request past it waits.
  static constexpr size_t kJsonBudget = 64u << 20;
  std::mutex json_mu_;
  std::condition_variable json_cv_;
  size_t json_bytes_ = 0;  // GUARDED_BY(json_mu_)
  bool stopped_ = false;
};

}  // namespace shoal
