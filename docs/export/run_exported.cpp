// Minimal C++ client of an atomnet export (docs/export.md): loads the .pt2 package with libtorch's
// AOTIModelPackageLoader, prints its metadata and evaluates a water molecule with an all-pairs list.
// Build: see docs/export.md. Usage: ./run_exported model.pt2
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include <iostream>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " model.pt2\n";
    return 2;
  }
  torch::inductor::AOTIModelPackageLoader loader(argv[1]);
  auto meta = loader.get_metadata();
  const auto dtype = meta["dtype"] == "float64" ? torch::kFloat64 : torch::kFloat32;
  std::cout << "cutoff " << meta["cutoff_A"] << " A, dtype " << meta["dtype"] << "\n";

  // water: O, H, H (Å); a full pair list (both directions) — every pair is within the cutoff here
  auto numbers = torch::tensor({8, 1, 1}, torch::kInt64);
  auto positions = torch::tensor({0.0, 0.0, 0.119, 0.0, 0.763, -0.477, 0.0, -0.763, -0.477}, dtype).view({3, 3});
  std::vector<int64_t> i, j;
  for (int64_t a = 0; a < 3; ++a)
    for (int64_t b = 0; b < 3; ++b)
      if (a != b) {
        i.push_back(a);
        j.push_back(b);
      }
  auto pair_i = torch::tensor(i, torch::kInt64);
  auto pair_j = torch::tensor(j, torch::kInt64);
  auto shifts = torch::zeros({static_cast<int64_t>(i.size()), 3}, dtype);  // no periodic images

  auto out = loader.run({numbers, positions, pair_i, pair_j, shifts});
  std::cout.precision(10);
  std::cout << "energy " << out[0].item<double>() << " eV\n";
  std::cout << "forces (eV/A)\n" << out[1] << "\n";
  std::cout << "atomic energies (eV)\n" << out[2] << "\n";
  return 0;
}
