// A standalone experiment behind docs/engine.md ("Speed"): what one random
// access costs on this machine as a function of the lines it reads. 131072
// accesses at uniform random slots of a 320 MiB region (2 MiB pages), each
// reading L adjacent 64-byte lines (all prefetched 16 accesses ahead) and
// adding them into a vector accumulator. If the cost were per access (a DRAM
// page or a TLB walk), L would hardly matter; it is per line instead, so a
// fifth line beside a 4-line row (e.g. a key header) costs ~20-25% more.
// Build and run: g++ -O3 -mavx2 -mfma -fopenmp random_lines.cpp -o rl && ./rl 1 && ./rl 2
#include <immintrin.h>
#include <omp.h>
#include <sys/mman.h>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
static inline uint64_t mix64(uint64_t x){x^=x>>30;x*=0xbf58476d1ce4e5b9ULL;x^=x>>27;x*=0x94d049bb133111ebULL;x^=x>>31;return x;}
static void* halloc(size_t b){ size_t h=2<<20; void* p=mmap(0,b+h,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); uintptr_t a=((uintptr_t)p+h-1)&~(uintptr_t)(h-1); madvise((void*)a,b,MADV_HUGEPAGE); memset((void*)a,1,b); return (void*)a;}
int main(int argc,char**argv){
  int nt=atoi(argv[1]); const int64_t n=131072; size_t REG=320<<20; char* base=(char*)halloc(REG);
  std::vector<uint64_t> off(n);
  auto run=[&](int L,int D, bool chain2){ // L lines per access, slot = L*64 bytes (or 320 for L=5)
    size_t slot=L*64; int64_t ns=REG/slot; uint64_t x=7; for(int64_t i=0;i<n;i++) off[i]=((x=mix64(x))%ns)*slot;
    std::vector<double> ts; volatile float sink=0;
    for(int rep=0;rep<15;rep++){
      auto t0=std::chrono::steady_clock::now();
      float tot=0;
      #pragma omp parallel for num_threads(nt) schedule(dynamic,1) reduction(+:tot)
      for(int c=0;c<32;c++){
        int64_t p0=c*(n/32), p1=p0+n/32; __m256 a=_mm256_setzero_ps();
        for(int64_t p=p0;p<p1;p++){
          if(p+D<p1){ const char* r=base+off[p+D]; for(int l=0;l<L;l++) _mm_prefetch(r+64*l,_MM_HINT_T0);}
          const char* r=base+off[p];
          for(int l=0;l<L;l++){ a=_mm256_add_ps(a,_mm256_loadu_ps((const float*)(r+64*l))); a=_mm256_add_ps(a,_mm256_loadu_ps((const float*)(r+64*l+32)));}
        }
        float t[8]; _mm256_storeu_ps(t,a); tot+=t[0];
      }
      sink=tot;
      ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now()-t0).count());
    }
    std::sort(ts.begin(),ts.end()); return ts[ts.size()/2]*1e3;
  };
  for(int r=0;r<2;r++) for(int L: {1,2,4,5,8}) printf("nt=%d lines=%d D=16 %.3f ms\n",nt,L,run(L,16,false));
}
