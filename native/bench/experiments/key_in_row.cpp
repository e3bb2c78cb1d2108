// A standalone experiment behind docs/engine.md ("Speed"): the pooled gather
// of the pooled-lookup bar's workload (1 M x 64, 4096 bags x 32, uniform) with
//   dense   - row ids given (no index), the floor;
//   current - the engine's layout: 64-byte buckets of 5 full keys + ids (16 MB);
//   key-in-row - the key in a header line beside the row (320-byte slots) and a
//                9.4 MB index of 8 x (tag32 | id32) per bucket, the key checked on
//                the row read.
// Build and run: g++ -O3 -mavx2 -mfma -fopenmp key_in_row.cpp -o kr && ./kr 2
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
static void* halloc(size_t b){ size_t h=2<<20; void* p=mmap(0,b+h,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); uintptr_t a=((uintptr_t)p+h-1)&~(uintptr_t)(h-1); madvise((void*)a,b,MADV_HUGEPAGE); memset((void*)a,0,b); return (void*)a;}
int main(int argc,char**argv){
  const int64_t N=1<<20, B=4096, L=32, n=B*L; int nt=atoi(argv[1]);
  std::vector<int64_t> keys(N); for(int64_t i=0;i<N;i++) keys[i]=i*7919+3;
  std::vector<int64_t> q(n); std::vector<uint32_t> dense(n); uint64_t x=1;
  for(int64_t i=0;i<n;i++){ uint32_t r=(x=mix64(x))%N; dense[i]=r; q[i]=keys[r]; }
  // A: current: 256B rows, 64B buckets with 5 keys + 5 ids, 262144 buckets (16MB)
  const int64_t NB_A=1<<18; struct BA{int64_t k[5]; uint32_t r[5]; uint32_t pad;};
  BA* ia=(BA*)halloc(NB_A*64); for(int64_t b=0;b<NB_A;b++) for(int s=0;s<5;s++) ia[b].r[s]=~0u;
  float* rowsA=(float*)halloc(N*256);
  for(int64_t i=0;i<N;i++){ uint64_t b=mix64(keys[i])&(NB_A-1); for(;;){int s=0; for(;s<5;s++) if(ia[b].r[s]==~0u) break; if(s<5){ia[b].k[s]=keys[i]; ia[b].r[s]=i; break;} b=(b+1)&(NB_A-1);} for(int j=0;j<64;j++) rowsA[i*64+j]=1; }
  // C: key in a 64B header line after the row (320B slots); index = 8 x (tag32|id32) per 64B bucket, 2^17 buckets (8MB)
  const int64_t NB_C=147456; uint64_t* ic=(uint64_t*)halloc(NB_C*64); for(int64_t i=0;i<NB_C*8;i++) ic[i]=~0ull;
  float* rowsC=(float*)halloc(N*320);
  for(int64_t i=0;i<N;i++){ uint64_t h=mix64(keys[i]); uint64_t b=((h&0xffffffffull)*NB_C)>>32; uint32_t tag=(uint32_t)(h>>32); for(;;){int s=0; for(;s<8;s++) if(ic[b*8+s]==~0ull) break; if(s<8){ic[b*8+s]=((uint64_t)tag<<32)|i; break;} b=(b+1==(uint64_t)NB_C)?0:b+1;} for(int j=0;j<64;j++) rowsC[i*80+j]=1; memcpy(&rowsC[i*80+64],&keys[i],8); }
  std::vector<float> out(B*64); std::vector<uint32_t> ids(n);
  auto run=[&](int mode){
    std::vector<double> ts;
    for(int rep=0;rep<25;rep++){
      auto t0=std::chrono::steady_clock::now();
      #pragma omp parallel for num_threads(nt) schedule(dynamic,1)
      for(int c=0;c<32;c++){
        int64_t p0=c*(n/32), p1=p0+n/32;
        if(mode==0) for(int64_t p=p0;p<p1;p++) ids[p]=dense[p];
        if(mode==1) for(int64_t p=p0;p<p1;p++){ if(p+16<p1) _mm_prefetch((const char*)&ia[mix64(q[p+16])&(NB_A-1)],_MM_HINT_T0);
          uint64_t b=mix64(q[p])&(NB_A-1); const __m256i k4=_mm256_set1_epi64x(q[p]);
          for(;;){ unsigned m=_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpeq_epi64(_mm256_loadu_si256((const __m256i*)ia[b].k),k4))) | ((ia[b].k[4]==q[p])<<4);
            if(m){ids[p]=ia[b].r[__builtin_ctz(m)];break;} b=(b+1)&(NB_A-1);} }
        if(mode==2) for(int64_t p=p0;p<p1;p++){ if(p+16<p1) _mm_prefetch((const char*)&ic[(((mix64(q[p+16])&0xffffffffull)*NB_C)>>32)*8],_MM_HINT_T0);
          uint64_t h=mix64(q[p]); uint64_t b=((h&0xffffffffull)*NB_C)>>32; const __m256i t8=_mm256_set1_epi32((int)(h>>32));
          for(;;){ const __m256i e0=_mm256_loadu_si256((const __m256i*)&ic[b*8]), e1=_mm256_loadu_si256((const __m256i*)&ic[b*8+4]);
            // tags are the high 32 bits of each 64-bit entry
            unsigned m0=_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(e0,t8)))&0xAA, m1=_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(e1,t8)))&0xAA;
            unsigned m=(m0|(m1<<8)); if(m){ ids[p]=(uint32_t)ic[b*8+(__builtin_ctz(m)>>1)]; break;} b=(b+1==(uint64_t)NB_C)?0:b+1;} }
        const int64_t S=(mode==2)?80:64; const float* rows=(mode==2)?rowsC:rowsA;
        for(int64_t bag=p0/L; bag<p1/L; bag++){
          __m256 a[8]; for(int k=0;k<8;k++) a[k]=_mm256_setzero_ps();
          for(int64_t p=bag*L;p<bag*L+L;p++){
            if(p+16<p1){ const char* r=(const char*)(rows+ids[p+16]*S); for(int l=0;l<S*4;l+=64) _mm_prefetch(r+l,_MM_HINT_T0);}
            const float* r=rows+ids[p]*S;
            if(mode==2){ int64_t kk; memcpy(&kk,r+64,8); if(kk!=q[p]) abort(); }
            for(int k=0;k<8;k++) a[k]=_mm256_add_ps(a[k],_mm256_loadu_ps(r+8*k));
          }
          for(int k=0;k<8;k++) _mm256_storeu_ps(&out[bag*64+8*k],a[k]);
        }
      }
      ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now()-t0).count());
    }
    std::sort(ts.begin(),ts.end()); return ts[ts.size()/2]*1e3;
  };
  for(int r=0;r<2;r++) printf("nt=%d dense %.2f ms | current (16MB key index) %.2f ms | key-in-row + 8MB tag index %.2f ms\n",nt,run(0),run(1),run(2));
}
