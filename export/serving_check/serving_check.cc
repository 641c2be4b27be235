// serving_check: proves a SavedModel serves in TensorFlow Serving's C++ runtime.
//
// It loads the export with tensorflow::LoadSavedModel (tag "serve"), the loader TF Serving's
// SavedModel bundle uses, and answers tensorflow.serving.PredictRequest messages the way TF
// Serving's Predict handler does (predict_util.cc): look up the signature, check the number of
// inputs, convert them with saved_model::GetInputValues, Session::Run the signature's output
// tensors, and return them as a PredictResponse (Tensor::AsProtoField).
//
// Usage:
//   serving_check EXPORT_DIR REQUEST_FILE...
//
// Each REQUEST_FILE holds one serialized tensorflow.serving.PredictRequest (e.g. written by
// `export.client`). If REQUEST_FILE.expect exists, it holds "<STATUS_CODE> <message substring>",
// e.g. "INVALID_ARGUMENT images must be", and the request passes only if it fails that way;
// otherwise it passes if it succeeds, and its PredictResponse is written to
// REQUEST_FILE.response. Prints one PASS/FAIL line per request.
//
// Exit status: 0 if the model loaded, every request passed and every signature of the export
// (serving_default included) answered at least one request successfully; 1 otherwise; 2 on a
// usage error.
//
// The PredictRequest/PredictResponse protos belong to TF Serving, not to the TensorFlow wheel, so
// their few fields are read and written here directly in protobuf wire format; the tensors inside
// them are tensorflow.TensorProto, parsed and serialized by TensorFlow itself.

#include <cstdint>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tensorflow/cc/saved_model/loader.h"
#include "tensorflow/cc/saved_model/util.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor.pb.h"
#include "tensorflow/core/protobuf/meta_graph.pb.h"
#include "tensorflow/core/public/session.h"

namespace {

// The constants of tensorflow/cc/saved_model/{tag,signature}_constants.h, whose headers the pip
// wheel does not ship.
constexpr char kServeTag[] = "serve";
constexpr char kDefaultSignature[] = "serving_default";
constexpr char kPredictMethod[] = "tensorflow/serving/predict";
constexpr char kInitOpSignature[] = "__saved_model_init_op";

// Protobuf wire types used by the messages read here.
constexpr int kVarint = 0;
constexpr int kFixed64 = 1;
constexpr int kLengthDelimited = 2;
constexpr int kFixed32 = 5;

// Sequential reader of protobuf wire format.
class WireReader {
 public:
  explicit WireReader(const std::string& bytes) : bytes_(bytes) {}

  bool AtEnd() const { return position_ >= bytes_.size(); }

  bool ReadVarint(uint64_t* value) {
    *value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (position_ >= bytes_.size()) return false;
      const uint8_t byte = static_cast<uint8_t>(bytes_[position_++]);
      *value |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if ((byte & 0x80) == 0) return true;
    }
    return false;
  }

  bool ReadTag(int* field, int* wire_type) {
    uint64_t tag;
    if (!ReadVarint(&tag)) return false;
    *field = static_cast<int>(tag >> 3);
    *wire_type = static_cast<int>(tag & 7);
    return *field > 0;
  }

  bool ReadLengthDelimited(std::string* payload) {
    uint64_t length;
    if (!ReadVarint(&length) || length > bytes_.size() - position_) return false;
    payload->assign(bytes_, position_, length);
    position_ += length;
    return true;
  }

  bool Skip(int wire_type) {
    uint64_t ignored;
    std::string ignored_bytes;
    switch (wire_type) {
      case kVarint:
        return ReadVarint(&ignored);
      case kFixed64:
        return Advance(8);
      case kLengthDelimited:
        return ReadLengthDelimited(&ignored_bytes);
      case kFixed32:
        return Advance(4);
      default:
        return false;
    }
  }

 private:
  bool Advance(size_t count) {
    if (count > bytes_.size() - position_) return false;
    position_ += count;
    return true;
  }

  const std::string& bytes_;
  size_t position_ = 0;
};

void PutVarint(uint64_t value, std::string* out) {
  while (value >= 0x80) {
    out->push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}

void PutLengthDelimited(int field, const std::string& payload, std::string* out) {
  PutVarint((static_cast<uint64_t>(field) << 3) | kLengthDelimited, out);
  PutVarint(payload.size(), out);
  out->append(payload);
}

// The fields of tensorflow.serving.PredictRequest that the Predict handler uses.
struct PredictRequest {
  std::string model_name;        // model_spec (1).name (1)
  std::string signature_name;    // model_spec (1).signature_name (3)
  google::protobuf::Map<std::string, tensorflow::TensorProto> inputs;  // inputs (2)
  std::vector<std::string> output_filter;                               // output_filter (3)
};

absl::Status ParseModelSpec(const std::string& bytes, PredictRequest* request) {
  WireReader reader(bytes);
  while (!reader.AtEnd()) {
    int field, wire_type;
    if (!reader.ReadTag(&field, &wire_type)) return absl::InvalidArgumentError("corrupt ModelSpec");
    if ((field == 1 || field == 3) && wire_type == kLengthDelimited) {
      std::string* target = field == 1 ? &request->model_name : &request->signature_name;
      if (!reader.ReadLengthDelimited(target)) return absl::InvalidArgumentError("corrupt ModelSpec");
    } else if (!reader.Skip(wire_type)) {
      return absl::InvalidArgumentError("corrupt ModelSpec");
    }
  }
  return absl::OkStatus();
}

absl::Status ParseInputEntry(const std::string& bytes, PredictRequest* request) {
  WireReader reader(bytes);
  std::string key, value;
  while (!reader.AtEnd()) {
    int field, wire_type;
    if (!reader.ReadTag(&field, &wire_type)) return absl::InvalidArgumentError("corrupt inputs entry");
    if ((field == 1 || field == 2) && wire_type == kLengthDelimited) {
      if (!reader.ReadLengthDelimited(field == 1 ? &key : &value)) {
        return absl::InvalidArgumentError("corrupt inputs entry");
      }
    } else if (!reader.Skip(wire_type)) {
      return absl::InvalidArgumentError("corrupt inputs entry");
    }
  }
  tensorflow::TensorProto tensor;
  if (!tensor.ParseFromString(value)) {
    return absl::InvalidArgumentError(absl::StrCat("input '", key, "' is not a TensorProto"));
  }
  request->inputs[key] = tensor;
  return absl::OkStatus();
}

absl::Status ParsePredictRequest(const std::string& bytes, PredictRequest* request) {
  WireReader reader(bytes);
  while (!reader.AtEnd()) {
    int field, wire_type;
    if (!reader.ReadTag(&field, &wire_type)) return absl::InvalidArgumentError("corrupt PredictRequest");
    std::string payload;
    if (field >= 1 && field <= 3 && wire_type == kLengthDelimited) {
      if (!reader.ReadLengthDelimited(&payload)) return absl::InvalidArgumentError("corrupt PredictRequest");
      if (field == 1) {
        absl::Status status = ParseModelSpec(payload, request);
        if (!status.ok()) return status;
      } else if (field == 2) {
        absl::Status status = ParseInputEntry(payload, request);
        if (!status.ok()) return status;
      } else {
        request->output_filter.push_back(payload);
      }
    } else if (!reader.Skip(wire_type)) {
      return absl::InvalidArgumentError("corrupt PredictRequest");
    }
  }
  return absl::OkStatus();
}

std::string JoinKeys(const std::set<std::string>& keys) { return absl::StrJoin(keys, ","); }

// Answers `request` like TF Serving's RunPredict; on success fills `response` (a serialized
// tensorflow.serving.PredictResponse) and `signature_used`.
absl::Status RunPredict(const tensorflow::SavedModelBundle& bundle, const PredictRequest& request,
                        std::string* response, std::string* signature_used) {
  const std::string signature_name =
      request.signature_name.empty() ? kDefaultSignature : request.signature_name;
  const auto& signatures = bundle.GetSignatures();
  auto found = signatures.find(signature_name);
  if (found == signatures.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("Serving signature key \"", signature_name, "\" not found."));
  }
  const tensorflow::SignatureDef& signature = found->second;
  if (signature.method_name() != kPredictMethod) {
    return absl::InternalError(absl::StrCat("Expected prediction signature method_name to be ", kPredictMethod,
                                            ". Was: ", signature.method_name()));
  }
  std::set<std::string> sent, expected;
  for (const auto& entry : request.inputs) sent.insert(entry.first);
  for (const auto& entry : signature.inputs()) expected.insert(entry.first);
  if (request.inputs.size() > static_cast<size_t>(signature.inputs().size()) ||
      (request.inputs.size() < static_cast<size_t>(signature.inputs().size()) && signature.defaults().empty())) {
    return absl::InvalidArgumentError(absl::StrCat("input size does not match signature: ", request.inputs.size(),
                                                   "!=", signature.inputs().size(), " len({", JoinKeys(sent),
                                                   "}) != len({", JoinKeys(expected), "})."));
  }
  std::vector<std::pair<std::string, tensorflow::Tensor>> inputs;
  absl::Status status = tensorflow::saved_model::GetInputValues(signature, request.inputs, inputs);
  if (!status.ok()) return status;

  std::vector<std::string> aliases = request.output_filter;
  if (aliases.empty()) {
    for (const auto& entry : signature.outputs()) aliases.push_back(entry.first);
  }
  std::vector<std::string> output_names;
  for (const std::string& alias : aliases) {
    auto output = signature.outputs().find(alias);
    if (output == signature.outputs().end()) {
      return absl::InvalidArgumentError(absl::StrCat("output tensor alias not found in signature: ", alias));
    }
    output_names.push_back(output->second.name());
  }
  std::vector<tensorflow::Tensor> outputs;
  tensorflow::RunMetadata run_metadata;
  status = bundle.GetSession()->Run(tensorflow::RunOptions(), inputs, output_names, {}, &outputs, &run_metadata);
  if (!status.ok()) return status;
  if (outputs.size() != aliases.size()) return absl::UnknownError("Predict internal error");

  response->clear();
  for (size_t i = 0; i < outputs.size(); ++i) {
    tensorflow::TensorProto proto;
    outputs[i].AsProtoField(&proto);
    std::string entry;
    PutLengthDelimited(1, aliases[i], &entry);
    PutLengthDelimited(2, proto.SerializeAsString(), &entry);
    PutLengthDelimited(1, entry, response);  // PredictResponse.outputs
  }
  std::string model_spec;
  PutLengthDelimited(1, request.model_name, &model_spec);
  PutLengthDelimited(3, signature_name, &model_spec);
  PutLengthDelimited(2, model_spec, response);  // PredictResponse.model_spec
  *signature_used = signature_name;
  return absl::OkStatus();
}

bool ReadFile(const std::string& path, std::string* contents) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return false;
  std::ostringstream buffer;
  buffer << file.rdbuf();
  *contents = buffer.str();
  return true;
}

std::string OneLine(std::string text) {
  for (char& c : text) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " EXPORT_DIR REQUEST_FILE...\n";
    return 2;
  }
  const std::string export_dir = argv[1];
  tensorflow::SavedModelBundle bundle;
  absl::Status status = tensorflow::LoadSavedModel(tensorflow::SessionOptions(), tensorflow::RunOptions(), export_dir,
                                                   {kServeTag}, &bundle);
  if (!status.ok()) {
    std::cout << "FAIL load " << export_dir << ": " << OneLine(status.ToString()) << std::endl;
    return 1;
  }
  std::cout << "LOADED " << export_dir << " signatures:";
  for (const auto& entry : bundle.GetSignatures()) std::cout << " " << entry.first;
  std::cout << std::endl;

  bool all_passed = true;
  std::set<std::string> served;
  for (int i = 2; i < argc; ++i) {
    const std::string path = argv[i];
    std::string bytes, expectation;
    if (!ReadFile(path, &bytes)) {
      std::cout << "FAIL " << path << ": cannot read the request file" << std::endl;
      all_passed = false;
      continue;
    }
    const bool expect_error = ReadFile(path + ".expect", &expectation);
    std::string expected_code, expected_text;
    if (expect_error) {
      while (!expectation.empty() && (expectation.back() == '\n' || expectation.back() == '\r')) {
        expectation.pop_back();
      }
      const size_t space = expectation.find(' ');
      expected_code = expectation.substr(0, space);
      expected_text = space == std::string::npos ? "" : expectation.substr(space + 1);
    }
    PredictRequest request;
    std::string response, signature_used;
    status = ParsePredictRequest(bytes, &request);
    if (status.ok()) status = RunPredict(bundle, request, &response, &signature_used);
    const std::string code = absl::StatusCodeToString(status.code());
    const std::string message = OneLine(std::string(status.message()));

    if (!expect_error) {
      if (status.ok()) {
        std::ofstream out(path + ".response", std::ios::binary);
        out << response;
        out.close();
        if (!out) {
          std::cout << "FAIL " << path << ": cannot write the response" << std::endl;
          all_passed = false;
          continue;
        }
        served.insert(signature_used);
        std::cout << "PASS " << path << " (" << signature_used << ")" << std::endl;
      } else {
        std::cout << "FAIL " << path << ": " << code << ": " << message << std::endl;
        all_passed = false;
      }
    } else if (!status.ok() && code == expected_code && message.find(expected_text) != std::string::npos) {
      std::cout << "PASS " << path << " refused as expected: " << code << ": " << message << std::endl;
    } else {
      std::cout << "FAIL " << path << ": expected " << expected_code << " containing '" << expected_text
                << "', got " << (status.ok() ? "OK" : code + ": " + message) << std::endl;
      all_passed = false;
    }
  }

  for (const auto& entry : bundle.GetSignatures()) {
    if (entry.first != kInitOpSignature && served.count(entry.first) == 0) {
      std::cout << "FAIL signature " << entry.first << " answered no request" << std::endl;
      all_passed = false;
    }
  }
  std::cout << (all_passed ? "ALL PASSED" : "SOME FAILED") << std::endl;
  return all_passed ? 0 : 1;
}
