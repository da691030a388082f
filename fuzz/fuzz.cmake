# Fuzz harnesses (fuzz/fuzz_<target>.cpp), one per reader. Always: fuzz_replay_<target>, the
# harness with fuzz/replay_main.cpp, run by ctest over the committed seeds and findings.
# With -DQF_FUZZ=ON (clang, sanitizer flags in CMAKE_CXX_FLAGS; scripts/fuzz.sh sets this up
# under build/fuzz): fuzz_<target>, the harness linked with libFuzzer.
set(QF_FUZZ_TARGETS gguf safetensors hf_config tokenizer_json tokenizer_bin llama2c qforge allocation mc_jsonl reference_logits)
option(QF_FUZZ "Build the libFuzzer targets (clang)" OFF)
foreach(t ${QF_FUZZ_TARGETS})
  set(src ${CMAKE_SOURCE_DIR}/fuzz/fuzz_${t}.cpp)
  add_executable(fuzz_replay_${t} ${src} ${CMAKE_SOURCE_DIR}/fuzz/replay_main.cpp)
  target_link_libraries(fuzz_replay_${t} PRIVATE qforge_lua)
  target_compile_definitions(fuzz_replay_${t} PRIVATE QF_SHARED_DIR="${QF_SHARED}")
  add_test(NAME fuzz_replay_${t} COMMAND fuzz_replay_${t} fuzz/corpus/${t} fuzz/findings/${t} WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  if(QF_FUZZ)
    add_executable(fuzz_${t} ${src})
    target_link_libraries(fuzz_${t} PRIVATE qforge_lua)
    target_compile_definitions(fuzz_${t} PRIVATE QF_SHARED_DIR="${QF_SHARED}")
    target_link_options(fuzz_${t} PRIVATE -fsanitize=fuzzer)
  endif()
endforeach()
