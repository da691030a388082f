#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "core/omp_wait.h"

int main(int argc, char** argv) {
  qf::default_passive_wait(argv);  // the same OpenMP wait policy as qforge
  return doctest::Context(argc, argv).run();
}
