// esr_predict: runs one signature of a SavedModel through tensorflow::LoadSavedModel, the loader
// TF Serving itself uses, so an export can be checked without a TF Serving binary.
//
// Usage:
//   esr_predict [--signature NAME] [--repeats N] [--op_library LIB.so]... EXPORT_DIR INPUT_FILE
//
// --op_library: custom-op libraries (the tensorflow_text/python/ops/_*.so files) dlopen'ed with
//   RTLD_GLOBAL before loading; their static initialisers register the TF-Text kernels. Without
//   them the model loads but Session::Run fails on the first TF-Text op.
// --repeats: timed runs after one untimed warm-up run (default 1).
//
// INPUT_FILE (written by esr_tf.export.cpp_client):
//   ESRPRED1\n
//   then per input, a header line and its data:
//   <name> string <count>\n     followed by <count> times: <byte length>\n<raw bytes>\n
//   <name> float <rank> <d0> .. <dn-1>\n   followed by prod(d) little-endian float32s, then \n
//   <name> int32 <rank> <d0> .. <dn-1>\n   followed by prod(d) little-endian int32s, then \n
//   @call <signature>\n   starts the inputs of one more call: the model is loaded once and each
//                         call runs its own signature (then --signature is not used).
//
// Output: one JSON object on stdout:
//   {"signature": .., "batch_size": .., "outputs": {key: {"dtype", "shape", "values"}},
//    "load_ms", "first_run_ms", "runs", "ms_per_run", "ms_per_example"}
// or, with @call lines, {"load_ms": .., "calls": [one object as above (no load_ms) per call]}.
// Floats use %.9g (exact round trip for float32); strings that are not valid UTF-8 are written
// as {"b64": ...}. A human-readable timing line goes to stderr.

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "tensorflow/cc/saved_model/loader.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/protobuf/meta_graph.pb.h"
#include "tensorflow/core/public/session.h"

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void Fail(const std::string& message, int code = 1) {
  std::fprintf(stderr, "esr_predict: error: %s\n", message.c_str());
  std::exit(code);
}

struct Args {
  std::string export_dir;
  std::string input_file;
  std::string signature = "serving_default";
  int repeats = 1;
  std::vector<std::string> op_libraries;
};

Args ParseArgs(int argc, char** argv) {
  const std::string usage =
      "usage: esr_predict [--signature NAME] [--repeats N] [--op_library LIB.so]... "
      "EXPORT_DIR INPUT_FILE";
  Args args;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&](const std::string& flag) -> std::string {
      if (i + 1 >= argc) Fail(flag + " needs a value\n" + usage, 2);
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      std::printf("%s\n", usage.c_str());
      std::exit(0);
    } else if (arg == "--signature") {
      args.signature = value(arg);
    } else if (arg == "--repeats") {
      std::string v = value(arg);
      char* end = nullptr;
      long n = std::strtol(v.c_str(), &end, 10);
      if (*end != '\0' || n < 1) Fail("--repeats must be a positive integer, got " + v, 2);
      args.repeats = static_cast<int>(n);
    } else if (arg == "--op_library") {
      args.op_libraries.push_back(value(arg));
    } else if (arg.rfind("--", 0) == 0) {
      Fail("unknown option " + arg + "\n" + usage, 2);
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() != 2) Fail(usage, 2);
  args.export_dir = positional[0];
  args.input_file = positional[1];
  return args;
}

// Reads one '\n'-terminated header line; the data after it may be binary.
bool ReadLine(std::ifstream& in, std::string* line) {
  return static_cast<bool>(std::getline(in, *line));
}

uint64_t ParseCount(const std::string& text, const std::string& where) {
  if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos) {
    Fail(where + ": expected a non-negative integer, got '" + text + "'");
  }
  return std::stoull(text);
}

void ExpectNewline(std::ifstream& in, const std::string& where) {
  if (in.get() != '\n') Fail(where + ": missing newline after the data (truncated file?)");
}

using Inputs = std::map<std::string, tensorflow::Tensor>;

struct Call {
  std::string signature;
  Inputs inputs;
};

// A dense tensor of `dtype` whose shape follows on the header line; raw little-endian data
// (the byte order of every TF CPU target we build on), then '\n'.
tensorflow::Tensor ReadDense(std::ifstream& in, std::istringstream& header, tensorflow::DataType dtype,
                             size_t item_bytes, const std::string& where) {
  std::string rank_text;
  header >> rank_text;
  const uint64_t rank = ParseCount(rank_text, where + " rank");
  tensorflow::TensorShape shape;
  for (uint64_t d = 0; d < rank; ++d) {
    std::string dim_text;
    header >> dim_text;
    shape.AddDim(static_cast<int64_t>(ParseCount(dim_text, where + " dim")));
  }
  tensorflow::Tensor tensor(dtype, shape);
  const auto bytes = static_cast<std::streamsize>(tensor.NumElements() * item_bytes);
  if (!in.read(static_cast<char*>(tensor.data()), bytes)) {
    Fail(where + ": fewer than " + std::to_string(bytes) + " data bytes (truncated file?)");
  }
  ExpectNewline(in, where);
  return tensor;
}

tensorflow::Tensor ReadStrings(std::ifstream& in, std::istringstream& header, const std::string& where) {
  std::string count_text;
  header >> count_text;
  const uint64_t count = ParseCount(count_text, where + " count");
  tensorflow::Tensor tensor(tensorflow::DT_STRING, tensorflow::TensorShape({static_cast<int64_t>(count)}));
  auto flat = tensor.flat<tensorflow::tstring>();
  for (uint64_t i = 0; i < count; ++i) {
    const std::string item = where + " item " + std::to_string(i);
    std::string length_line;
    if (!ReadLine(in, &length_line)) Fail(item + ": missing (truncated file?)");
    const uint64_t length = ParseCount(length_line, item + " length");
    std::string bytes(length, '\0');
    if (!in.read(bytes.data(), static_cast<std::streamsize>(length))) {
      Fail(item + ": fewer than " + std::to_string(length) + " bytes (truncated file?)");
    }
    ExpectNewline(in, item);
    flat(static_cast<int64_t>(i)) = bytes;
  }
  return tensor;
}

// The calls of the file: one per "@call NAME" line, or a single one for `default_signature`.
std::vector<Call> ReadCalls(const std::string& path, const std::string& default_signature, bool* multi) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail("cannot open input file " + path);
  std::string line;
  if (!ReadLine(in, &line) || line != "ESRPRED1") {
    Fail(path + ": first line must be 'ESRPRED1'");
  }
  std::vector<Call> calls;
  *multi = false;
  while (ReadLine(in, &line)) {
    if (line.empty()) continue;
    std::istringstream header(line);
    std::string name, kind;
    header >> name >> kind;
    if (name == "@call") {
      if (kind.empty()) Fail(path + ": '@call' needs a signature name");
      if (!*multi && !calls.empty()) Fail(path + ": inputs before the first '@call' line");
      *multi = true;
      calls.push_back({kind, {}});
      continue;
    }
    if (calls.empty()) calls.push_back({default_signature, {}});
    Inputs& inputs = calls.back().inputs;
    const std::string where = path + ": input '" + name + "'";
    if (inputs.count(name)) Fail(where + " given twice");
    if (kind == "string") {
      inputs.emplace(name, ReadStrings(in, header, where));
    } else if (kind == "float") {
      inputs.emplace(name, ReadDense(in, header, tensorflow::DT_FLOAT, sizeof(float), where));
    } else if (kind == "int32") {
      inputs.emplace(name, ReadDense(in, header, tensorflow::DT_INT32, sizeof(int32_t), where));
    } else {
      Fail(where + ": unknown kind '" + kind + "' (expected 'string', 'float' or 'int32')");
    }
  }
  if (calls.empty()) Fail(path + ": no inputs");
  for (const Call& call : calls) {
    if (call.inputs.empty()) Fail(path + ": call of '" + call.signature + "' has no inputs");
  }
  return calls;
}

// Structural UTF-8 check (lead byte + continuation bytes); enough to pick string vs b64.
bool IsValidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t extra;
    if (c < 0x80) {
      extra = 0;
    } else if ((c >> 5) == 0x6) {
      extra = 1;
    } else if ((c >> 4) == 0xE) {
      extra = 2;
    } else if ((c >> 3) == 0x1E) {
      extra = 3;
    } else {
      return false;
    }
    if (i + extra >= s.size()) return false;  // truncated sequence
    for (size_t k = 1; k <= extra; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += extra + 1;
  }
  return true;
}

std::string Base64(const std::string& in) {
  static const char* kChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out += kChars[(v >> s) & 63];
  }
  if (i < in.size()) {
    uint32_t v = uint8_t(in[i]) << 16;
    if (i + 1 < in.size()) v |= uint8_t(in[i + 1]) << 8;
    out += kChars[(v >> 18) & 63];
    out += kChars[(v >> 12) & 63];
    out += i + 1 < in.size() ? kChars[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string JsonString(const std::string& s) {
  if (!IsValidUtf8(s)) return "{\"b64\": \"" + Base64(s) + "\"}";
  std::string out = "\"";
  for (const char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

// NaN / Infinity are not JSON, but Python's json module reads these spellings.
std::string JsonNumber(double v, const char* format) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  char buf[40];
  std::snprintf(buf, sizeof(buf), format, v);
  return buf;
}

std::string TensorJson(const tensorflow::Tensor& t, const std::string& key) {
  std::string shape = "[";
  for (int d = 0; d < t.dims(); ++d) {
    shape += (d ? ", " : "") + std::to_string(t.dim_size(d));
  }
  shape += "]";
  std::string dtype;
  std::string values = "[";
  const int64_t n = t.NumElements();
  auto sep = [](int64_t i) { return std::string(i ? ", " : ""); };
  switch (t.dtype()) {
    case tensorflow::DT_FLOAT:
      dtype = "float32";
      for (int64_t i = 0; i < n; ++i) values += sep(i) + JsonNumber(t.flat<float>()(i), "%.9g");
      break;
    case tensorflow::DT_DOUBLE:
      dtype = "float64";
      for (int64_t i = 0; i < n; ++i) values += sep(i) + JsonNumber(t.flat<double>()(i), "%.17g");
      break;
    case tensorflow::DT_INT32:
      dtype = "int32";
      for (int64_t i = 0; i < n; ++i) values += sep(i) + std::to_string(t.flat<int32_t>()(i));
      break;
    case tensorflow::DT_INT64:
      dtype = "int64";
      for (int64_t i = 0; i < n; ++i) values += sep(i) + std::to_string(t.flat<int64_t>()(i));
      break;
    case tensorflow::DT_BOOL:
      dtype = "bool";
      for (int64_t i = 0; i < n; ++i) values += sep(i) + (t.flat<bool>()(i) ? "true" : "false");
      break;
    case tensorflow::DT_STRING:
      dtype = "string";
      for (int64_t i = 0; i < n; ++i) {
        values += sep(i) + JsonString(std::string(t.flat<tensorflow::tstring>()(i)));
      }
      break;
    default:
      Fail("output '" + key + "' has unsupported dtype " + tensorflow::DataTypeString(t.dtype()));
  }
  return "{\"dtype\": \"" + dtype + "\", \"shape\": " + shape + ", \"values\": " + values + "]}";
}

double MsSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// Runs one call's signature (one untimed warm-up run, then `repeats` timed ones); its JSON object.
std::string RunCall(const tensorflow::SavedModelBundle& bundle, const std::string& export_dir,
                    const std::string& input_file, Call call, int repeats) {
  const auto& signatures = bundle.meta_graph_def.signature_def();
  const auto signature_it = signatures.find(call.signature);
  if (signature_it == signatures.end()) {
    std::string names;
    for (const auto& entry : signatures) {
      if (entry.first.rfind("__", 0) == 0) continue;  // e.g. __saved_model_init_op
      names += (names.empty() ? "" : ", ") + entry.first;
    }
    Fail("signature '" + call.signature + "' not in " + export_dir + " (has: " + names + ")");
  }
  const tensorflow::SignatureDef& signature = signature_it->second;

  std::vector<std::pair<std::string, tensorflow::Tensor>> feeds;
  int64_t batch_size = -1;
  for (const auto& entry : signature.inputs()) {
    const auto found = call.inputs.find(entry.first);
    if (found == call.inputs.end()) {
      Fail("signature '" + call.signature + "' needs input '" + entry.first + "', missing from " +
           input_file);
    }
    if (found->second.dtype() != entry.second.dtype()) {
      Fail("input '" + entry.first + "': file gives " +
           tensorflow::DataTypeString(found->second.dtype()) + ", signature wants " +
           tensorflow::DataTypeString(entry.second.dtype()));
    }
    if (found->second.dims() > 0) batch_size = std::max(batch_size, found->second.dim_size(0));
    feeds.emplace_back(entry.second.name(), found->second);
    call.inputs.erase(found);
  }
  if (!call.inputs.empty()) {
    Fail("input '" + call.inputs.begin()->first + "' is not an input of signature '" +
         call.signature + "'");
  }

  std::vector<std::string> output_keys;
  for (const auto& entry : signature.outputs()) output_keys.push_back(entry.first);
  std::sort(output_keys.begin(), output_keys.end());
  std::vector<std::string> fetches;
  for (const std::string& key : output_keys) {
    fetches.push_back(signature.outputs().at(key).name());
  }

  std::vector<tensorflow::Tensor> outputs;
  auto run = [&]() {
    outputs.clear();
    const absl::Status status = bundle.session->Run(feeds, fetches, {}, &outputs);
    if (status.ok()) return;
    std::string hint;
    if (status.ToString().find("Op type not registered") != std::string::npos) {
      hint = "\n(custom ops such as TF-Text's must be loaded with --op_library LIB.so)";
    }
    Fail("running signature '" + call.signature + "': " + status.ToString() + hint);
  };
  const Clock::time_point first_start = Clock::now();
  run();  // Untimed warm-up: the first run initialises kernels and allocators.
  const double first_run_ms = MsSince(first_start);
  const Clock::time_point timed_start = Clock::now();
  for (int r = 0; r < repeats; ++r) run();
  const double ms_per_run = MsSince(timed_start) / repeats;
  const double ms_per_example = batch_size > 0 ? ms_per_run / batch_size : ms_per_run;

  std::string json = "{\"signature\": " + JsonString(call.signature) +
                     ", \"batch_size\": " + std::to_string(batch_size) + ", \"outputs\": {";
  for (size_t i = 0; i < output_keys.size(); ++i) {
    json += (i ? ", " : "") + JsonString(output_keys[i]) + ": " +
            TensorJson(outputs[i], output_keys[i]);
  }
  json += "}, \"first_run_ms\": " + JsonNumber(first_run_ms, "%.3f") +
          ", \"runs\": " + std::to_string(repeats) +
          ", \"ms_per_run\": " + JsonNumber(ms_per_run, "%.9g") +
          ", \"ms_per_example\": " + JsonNumber(ms_per_example, "%.9g") + "}";
  std::fprintf(stderr,
               "esr_predict: %s: first run %.2f ms, %d timed run(s): %.3f ms/run, "
               "%.4f ms/example (batch %lld)\n",
               call.signature.c_str(), first_run_ms, repeats, ms_per_run, ms_per_example,
               static_cast<long long>(batch_size));
  return json;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = ParseArgs(argc, argv);

  // Custom ops must be registered before the graph is imported; RTLD_GLOBAL lets the
  // libraries resolve symbols against the already-loaded libtensorflow_framework.
  for (const std::string& library : args.op_libraries) {
    if (dlopen(library.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
      Fail("cannot load op library " + library + ": " + dlerror());
    }
  }
  bool multi = false;
  std::vector<Call> calls = ReadCalls(args.input_file, args.signature, &multi);

  const Clock::time_point load_start = Clock::now();
  tensorflow::SavedModelBundle bundle;
  // "serve" is tensorflow::kSavedModelTagServe; tag_constants.h is not shipped in the wheel.
  const absl::Status load_status = tensorflow::LoadSavedModel(
      tensorflow::SessionOptions(), tensorflow::RunOptions(), args.export_dir, {"serve"}, &bundle);
  if (!load_status.ok()) Fail("loading " + args.export_dir + ": " + load_status.ToString());
  const double load_ms = MsSince(load_start);
  std::fprintf(stderr, "esr_predict: load %.1f ms\n", load_ms);

  const std::string load_json = "\"load_ms\": " + JsonNumber(load_ms, "%.3f");
  if (!multi) {
    std::string json = RunCall(bundle, args.export_dir, args.input_file, std::move(calls[0]), args.repeats);
    json.back() = ',';  // one object: the call's fields, then load_ms
    std::printf("%s %s}\n", json.c_str(), load_json.c_str());
    return 0;
  }
  std::string json = "{" + load_json + ", \"calls\": [";
  for (size_t i = 0; i < calls.size(); ++i) {
    json += (i ? ", " : "") + RunCall(bundle, args.export_dir, args.input_file, std::move(calls[i]), args.repeats);
  }
  std::printf("%s]}\n", json.c_str());
  return 0;
}
