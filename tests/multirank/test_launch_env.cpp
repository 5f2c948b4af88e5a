// Where rank and world come from: comm-mpi's detect_launch_env (OpenMPI, PMI,
// Slurm, torchrun-style variables) and the core's launcher_world_from_env,
// which makes comm "auto" pick the launcher's communicator. Reads the
// environment only: MPI is not started.
#include <gtest/gtest.h>

#include <cstdlib>

#include "mpi_comm.hpp"
#include "runtime.hpp"

namespace {

const char* kVars[] = {"OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK",
                       "OMPI_COMM_WORLD_LOCAL_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_SIZE", "MPI_LOCALRANKID",
                       "MPI_LOCALNRANKS", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID",
                       "SLURM_STEP_ID", "SLURM_NODEID", "SLURM_STEP_TASKS_PER_NODE", "WORLD_SIZE", "RANK",
                       "LOCAL_RANK", "LOCAL_WORLD_SIZE"};

class LaunchEnv : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* v : kVars) ::unsetenv(v);
  }
  void TearDown() override { SetUp(); }
  static void set(const char* k, const char* v) { ::setenv(k, v, 1); }
};

TEST_F(LaunchEnv, NoLauncher) {
  weft::LaunchInfo i = weft::mpi::detect_launch_env();
  EXPECT_FALSE(i.external);
  EXPECT_EQ(i.world, 1);
  EXPECT_EQ(weft::launcher_world_from_env(), 0);
}

TEST_F(LaunchEnv, OpenMpiWinsOverTorchrunVariables) {
  set("OMPI_COMM_WORLD_SIZE", "4");
  set("OMPI_COMM_WORLD_RANK", "3");
  set("OMPI_COMM_WORLD_LOCAL_RANK", "1");
  set("OMPI_COMM_WORLD_LOCAL_SIZE", "2");
  set("WORLD_SIZE", "8");
  set("RANK", "5");
  weft::LaunchInfo i = weft::mpi::detect_launch_env();
  EXPECT_TRUE(i.external);
  EXPECT_EQ(i.world, 4);
  EXPECT_EQ(i.rank, 3);
  EXPECT_EQ(i.local_rank, 1);
  EXPECT_EQ(i.local_size, 2);
  EXPECT_EQ(weft::launcher_world_from_env(), 4);
}

TEST_F(LaunchEnv, Pmi) {
  set("PMI_SIZE", "3");
  set("PMI_RANK", "2");
  weft::LaunchInfo i = weft::mpi::detect_launch_env();
  EXPECT_EQ(i.world, 3);
  EXPECT_EQ(i.rank, 2);
  EXPECT_EQ(weft::launcher_world_from_env(), 3);
}

TEST_F(LaunchEnv, SlurmStep) {
  set("SLURM_STEP_NUM_TASKS", "5");
  set("SLURM_NTASKS", "5");
  set("SLURM_PROCID", "4");
  set("SLURM_LOCALID", "0");
  set("SLURM_NODEID", "2");
  set("SLURM_STEP_TASKS_PER_NODE", "2(x2),1");
  weft::LaunchInfo i = weft::mpi::detect_launch_env();
  EXPECT_TRUE(i.external);
  EXPECT_EQ(i.world, 5);
  EXPECT_EQ(i.rank, 4);
  EXPECT_EQ(i.local_rank, 0);
  EXPECT_EQ(i.local_size, 1);  // node 2 of "2(x2),1"
  set("SLURM_NODEID", "1");
  EXPECT_EQ(weft::mpi::detect_launch_env().local_size, 2);
  EXPECT_EQ(weft::launcher_world_from_env(), 5);
}

TEST_F(LaunchEnv, SlurmBatchScriptAndSingleTaskStepAreNotALaunch) {
  // A batch script has SLURM_NTASKS and SLURM_PROCID but no job step.
  set("SLURM_NTASKS", "4");
  set("SLURM_PROCID", "0");
  EXPECT_FALSE(weft::mpi::detect_launch_env().external);
  EXPECT_EQ(weft::launcher_world_from_env(), 0);
  // `srun -n 1 weft train ...` keeps ranks as threads.
  set("SLURM_STEP_NUM_TASKS", "1");
  EXPECT_EQ(weft::launcher_world_from_env(), 0);
}

TEST_F(LaunchEnv, TorchrunStyle) {
  set("WORLD_SIZE", "8");
  set("RANK", "6");
  set("LOCAL_RANK", "2");
  set("LOCAL_WORLD_SIZE", "4");
  weft::LaunchInfo i = weft::mpi::detect_launch_env();
  EXPECT_TRUE(i.external);
  EXPECT_EQ(i.world, 8);
  EXPECT_EQ(i.rank, 6);
  EXPECT_EQ(i.local_rank, 2);
  EXPECT_EQ(i.local_size, 4);
  EXPECT_EQ(weft::launcher_world_from_env(), 8);
}

}  // namespace
