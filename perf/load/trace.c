/* ib-load's workloads: trace parsing and deterministic prompt text (include/ibrain/loadgen.h). */
#include "ibrain/loadgen.h"
#include "ibrain/ondemand_c.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Key namespaces: Mooncake hash_ids use the low 32 bits only. */
#define KEY_AZURE (1ull << 56)
#define KEY_SP_SYSTEM (2ull << 56)
#define KEY_SP_QUESTION (3ull << 56)
#define KEY_MT_SYSTEM (4ull << 56)
#define KEY_MT_HISTORY (5ull << 56)
#define KEY_MT_QUESTION (6ull << 56)

void ib_load_workload_init(ib_load_workload_t *w)
{
    memset(w, 0, sizeof(*w));
    w->bytes_per_token = 4;
    w->block_tokens = 512;
    w->system_tokens = 2048;
    w->question_tokens = 128;
    w->history_tokens = 1000;
    w->turns = 5;
    w->seed = 1;
}

void ib_load_workload_free(ib_load_workload_t *w)
{
    for (size_t i = 0; i < w->nitems; i++)
        free(w->items[i].keys);
    free(w->items);
    w->items = NULL;
    w->nitems = w->cap = 0;
}

static ib_load_item_t *push_item(ib_load_workload_t *w)
{
    if (w->nitems == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 1024;
        ib_load_item_t *p = realloc(w->items, cap * sizeof(*p));
        if (p == NULL)
            return NULL;
        w->items = p;
        w->cap = cap;
    }
    ib_load_item_t *it = &w->items[w->nitems++];
    memset(it, 0, sizeof(*it));
    return it;
}

/* ---- text ---- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* 2048 three-letter words, each of which with a space in front (" abc") is exactly one
 * token for the Qwen3 and the Llama 3 tokenizers, and stays one token whatever word comes
 * before or after it (their pre-tokenizers split text into " letters" pieces). Picked by
 * encoding every " xyz" with ib-tokenize and both tokenizers (the first 2048 that were one
 * token for both). */
#define NWORDS 2048
static const char words[NWORDS * 3 + 1] =
    "aaaaanabaabbabcabiablabsabyaccaceachackaclactadaadbadcaddadeadjadmadoadradsadvaeraes"
    "affaflafrafsaftageaggagoagraidailaimainaioairaisakaakoaktakualbalcaldalealfalgalialk"
    "allalmaloalsaltamaambamdamiamoampamtamyanaancandanganiankannanoansantanvanxanyanzaos"
    "apaapeaphapiapkaplapoappapraptaquaraarbarcardareargarkarmarparrartaryascashasiaskasm"
    "asnassastataateathatlatmatrattaucaudaufaugaunaupaurausautauxavaaveavgaviaweawkawsaxe"
    "axsayraziaztbabbacbadbagbahbajbakbalbambanbarbasbatbaybazbbcbbwbcmbebbedbeebefbegbeh"
    "beibekbelbembenberbesbetbevbewbeybezbfdbfsbibbicbidbifbigbijbikbilbinbiobipbirbisbit"
    "bizblablebliblkblobmibmpboabobbodbogbolbombonbooborbosbotboubowboxboybpmbppbpybrabre"
    "bribrobrubstbtcbtnbtwbubbucbudbufbugbulbumbunburbusbutbuybuzbyebzwcabcaccadcafcalcam"
    "cancapcarcascatcavcazcbdcboccpcdrcdscelcencepcercescetcfgcgichachechichkchochrchucic"
    "cidcifcigcilcincirciscitcivclacleclfcliclkcloclrclscmbcmdcmpcmscnncntcobcoccodcofcog"
    "cohcolcomconcopcorcoscotcoucovcowcoycozcpfcppcpscptcpucracrccrecricrocrtcrucrycsrcss"
    "cstcsvctlctrctxcubcuccudcuecuicukculcumcupcurcuscutcuzcvscwdcyccylcyncytczydabdacdad"
    "dagdahdaidakdaldamdandaodapdardasdatdaudavdaydbcdbgdbldbodbsdccdctddldebdecdeddeedef"
    "degdeidejdeldemdendepderdesdetdevdewdexdezdfsdgvdhediadibdicdiddiedifdigdikdildimdin"
    "diodipdirdisditdivdiydizdladlgdlldmadmgdnadnidnsdobdocdoddoedofdogdoidokdoldomdondop"
    "dordosdotdoudovdowdpidpsdradredridrmdrodrudrvdrydspdstdtoduadubduedugdukduldumdunduo"
    "dupdurdusdutduydvddyedyndysdzieageareaseateaxebpebxeccecheclecoecsectecxediedmedsedt"
    "eduedxeeneereffeggegoegtegyeideigeinekselaeleelfelkellelmeloelseltembemoempencendenf"
    "engenhennenrensentenveofeosepseqlequeraerbereerfergerherkermerneroerrerseruerverwery"
    "esaesceseesieskeslesoespessestetaetcethetteupeuxeveevtexcexeexhexpexteyefabfacfalfam"
    "fanfarfasfatfavfaxfazfdsfecfedfeefelfemfenferfetfeufewffiffmfftfibficfidfiefiffigfil"
    "fimfinfirfisfitfixfizfkkflafldfleflofluflyfmtfocfodfoefogfoifolfonfooforfosfotfoufov"
    "foxfpsfrafrefrifrmfrofryfsmfstftpfuefugfulfunfurfusfutfwdgabgadgaggalgamgangapgargas"
    "gaygazgbcgccgcdgdbgdkgdygebgedgeegefgeggehgekgelgemgengeogepgergesgetgevgewgezgfxgia"
    "gibgidgifgiggimgingiogirgitglegliglmglogluglygobgodgolgongoogorgotgougovgpsgpugqlgra"
    "grdgregrigrogrpgsigslgstgtkguigulgumgungutguygymgyrhabhachadhaihakhalhamhanhapharhas"
    "hathavhayhazhdchdfhdrhebhedhegheihelhemhenhepherheshethexheyhichidhijhilhimhinhiphis"
    "hithmmhobhochodhoehogholhomhonhophorhoshothowhoyhrshsvhtthubhudhuehughuhhumhunhurhus"
    "huthvahymhypiamiariceichiciicyideidiidsidxiffifsignihmihnihrihtiidiiiileiliilkillils"
    "imaimbimeimgimmimpimsimuincindineinfinginhiniinjinkinninpinsintinviodioniosiovipcips"
    "iptipvircireirmirqirrisaisciseisiislisnisoispisrissistithitkitmitritsituivejabjacjag"
    "jakjaljamjanjapjarjavjawjedjegjejjeljerjesjetjeujewjigjimjitjmpjobjoejogjonjosjotjou"
    "jovjoyjpgjsxjubjudjuejugjuljunjurjusjwtkabkadkakkalkamkankaokapkarkaskatkaykazkedkel"
    "kemkenkepkerkesketkeykhikhokhukidkilkimkinkirkitklaklekmsknekobkodkokkolkomkonkopkor"
    "koskotkrakrbkreksikukkulkunkupkurkutkvmkvplablacladlaglahlaklamlanlaplarlaslatlavlaw"
    "laxlaylazlbllbslcdlcmldaldbldcledleelegleilemlenleolerlesletlevlexleylhslialibliclid"
    "lielifliglijliklillimlinliplislitlivllelnglobloclodlogloiloklollonlorloslotloulovlow"
    "lsplstltdlualublucludlugluiluklullumlunluplurlutluxluzlvllynlyrlysmacmadmagmahmaimaj"
    "makmalmammanmapmarmasmatmaumavmaxmaymccmdbmdimdlmecmedmeemegmejmelmemmenmermesmetmeu"
    "mexmezmgamgrmiamicmidmiemigmijmikmilmimminmiomipmirmismitmixmlxmmcmobmocmodmogmoimol"
    "mommonmoomopmormosmotmoumovmoymozmpgmphmpimplmpzmrbmsemsgmsmmtxmucmudmuemugmujmulmum"
    "munmurmusmutmuxmuymysnabnadnagnahnajnaknalnamnannaonapnarnasnatnaunavnawnaznbrnebnec"
    "nednefnegnehneinelnemnenneonepnernetneunewnexnflnfsnganghngungxnhunibnicnidnienignik"
    "nilnimninnipnirnitnobnocnodnoenognoinoknomnonnopnornosnotnounovnownpcnpmnrwnthntonud"
    "nuenugnumnunnurnutnxtnyanyeoakoatobeobjoblobrobsobtoccochocioctoddodeodpoffofsoftogl"
    "ogrogsoidoiloldoleoliomaomnomponconeonsontookopcopioppopropsoptoraorborcordoreorgori"
    "ormornoroortoscosgospossostotpottoudouiouroutoweowlownoxypacpadpagpaipajpakpalpampan"
    "papparpaspatpaupavpawpaypazpcapcbpcipclpcmpcspctpdbpdfpdopdupeapecpedpeepegpelpempen"
    "pepperpespetpeupewphiphpphypicpidpiepigpiipijpikpilpinpippirpispitpivpixpkgpktplaplc"
    "plepllplspltplypnepngpnlpobpocpodpogpoipojpokpolpomponpoopopporpospotpoupovpowpozppl"
    "ppmpptpraprepriprmproprtprvpryprzpsipstpsypszptrptspubpudpulpunpuppurpusputpwdpwmpyl"
    "pympyspytqedqosqryqtyquaquequiquoquyrabracradragrajrakramranraprarrasratravrawrayraz"
    "rdfrdrrebrecredrefregrejrekrelremrenrepreqrerresretrevrewrexrezrflrgbrherhorhsribric"
    "ridrifrigrijrimrinrioriprisritrivrmsrndrngrnnrobrocrodrogroirolromroprosrotrourowroy"
    "rozrpcrpmrptrsarsprssrstrtcrtertlrtnruarubrudruerugrumrunrusrutsabsacsadsafsagsaisak"
    "salsamsansapsarsatsausavsawsaxsayscasceschscisclscmscnscoscpscrsdfsdksdlseasecsedsee"
    "segsehseisekselsemsenseosepseqsersessetseusewsexsezshasheshlshmshoshrshysiasicsidsie"
    "sigsiksilsimsinsipsirsissitsixsizskaskbskeskisklskuskyslaslesloslusmbsmesmosmssndsne"
    "snosnssobsocsodsofsogsoksolsomsonsoosopsorsossousowsoyspaspdspesphspisplsposppsprspy"
    "sqlsqrsqusrcsrvsshsslstastdstestkstmstostrstsstustysuasubsucsudsuesufsugsuisuksulsum"
    "sunsuosupsursussutsvcsvesvgsvmsvnsvosweswosymsynsysszytabtactadtagtahtaitaktaltamtan"
    "taptartastattautavtaxtbltcbtcpteatectedteetegtehtejtekteltemtenteptertestettextgttha"
    "thethithothrthuthytictidtietiktiltimtintiptirtittlstmptobtoctodtoetogtoitoktoltomton"
    "tootoptortottoutowtoxtoytphtpltratretrgtritrotrxtrytsltsptstttkttlttsttytuatubtudtug"
    "tultumtuntuotupturtustuttuytvbtwetwotxntxttymtyptyrtysuczudpugluiduitullultumaumbump"
    "unaunbuncunduneunfungunhuniunkunlunmunnunounpunrunsuntunwuomupduppupsupturbureurguri"
    "urlurnusausbuseusousrustusuutcutfuurvacvadvagvaivakvalvanvapvarvasvatvazvecvedvegveh"
    "vejvelvemvenvervesvetvexvezvfsviavibvicvidvievigvilvimvinvipvirvisvitvivvizvocvogvoi"
    "volvomvonvorvosvotvouvowvoxvoyvozvpnvravtkvtxvuevulwagwahwalwanwarwaswatwavwaxwaywcs"
    "webwedweewegweiwelwenwerweswetwhewhowhywidwiewigwijwikwilwinwirwiswitwndwolwomwonwoo"
    "worwowwrewspwszwurwwwwymwynwysxcbxenxhrxlsxmlxmmxorxsixxxxyzyakyanyapyatyawyayyazydk"
    "yenyeryesyetyiiyogyokyolyouyrsyumyupyynzabzadzagzajzakzalzamzapzarzawzenzerziezigzij"
    "zipzmqzoozou";

int ib_load_block_text(const ib_load_workload_t *w, uint64_t key, uint32_t tokens, ib_buf_t *out)
{
    uint32_t bpt = w->bytes_per_token ? w->bytes_per_token : 4;
    if (ib_buf_try_reserve(out, (size_t)tokens * bpt) != 0)
        return -1;
    uint64_t state = key * 0xd1342543de82ef95ull ^ w->seed;
    char *p = out->ptr + out->len;
    for (uint32_t t = 0; t < tokens; t++) {
        uint64_t r = splitmix64(&state);
        *p++ = ' ';
        if (bpt == 4) { /* one real token: a word of the table */
            memcpy(p, words + (r % NWORDS) * 3, 3);
            p += 3;
            continue;
        }
        for (uint32_t k = 1; k < bpt; k++) {
            *p++ = (char)('a' + r % 26);
            r /= 26;
        }
    }
    out->len = (size_t)(p - out->ptr);
    return 0;
}

int ib_load_system_prompt(const ib_load_workload_t *w, uint32_t group, ib_buf_t *out)
{
    uint64_t key = w->source == IB_SRC_MULTI_TURN ? KEY_MT_SYSTEM : (KEY_SP_SYSTEM | group);
    return ib_load_block_text(w, key, w->system_tokens, out);
}

int ib_load_turn_question(const ib_load_workload_t *w, uint32_t user, uint32_t turn, ib_buf_t *out)
{
    if (turn == 0 && ib_load_block_text(w, KEY_MT_HISTORY | user, w->history_tokens, out) != 0)
        return -1;
    return ib_load_block_text(w, KEY_MT_QUESTION | ((uint64_t)user << 16) | turn, w->question_tokens, out);
}

int ib_load_item_prompt(const ib_load_workload_t *w, const ib_load_item_t *it, ib_buf_t *system, ib_buf_t *out)
{
    switch (w->source) {
    case IB_SRC_MOONCAKE: {
        uint32_t left = it->input_tokens;
        for (uint32_t i = 0; i < it->nkeys && left > 0; i++) {
            uint32_t n = left < w->block_tokens ? left : w->block_tokens;
            if (ib_load_block_text(w, it->keys[i], n, out) != 0)
                return -1;
            left -= n;
        }
        return 0;
    }
    case IB_SRC_AZURE:
        return ib_load_block_text(w, KEY_AZURE | it->index, it->input_tokens, out);
    case IB_SRC_SHARED_PREFIX:
        if (ib_load_system_prompt(w, it->group, system) != 0)
            return -1;
        return ib_load_block_text(w, KEY_SP_QUESTION | ((uint64_t)it->group << 24) | it->index, w->question_tokens, out);
    case IB_SRC_MULTI_TURN:
        return -1; /* driven turn by turn by the client */
    }
    return -1;
}

/* ---- traces ---- */

int ib_load_parse_mooncake_line(struct ib_json_parser *json, const char *line, size_t len, ib_load_item_t *out,
                                char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    int64_t ts, in, outl;
    if (ib_json_pointer_int(json, line, len, "/timestamp", &ts) != 0 || ts < 0) {
        snprintf(err, errlen, "'timestamp' missing or not a non-negative integer");
        return -1;
    }
    if (ib_json_pointer_int(json, line, len, "/input_length", &in) != 0 || in <= 0 || in > (1 << 24)) {
        snprintf(err, errlen, "'input_length' missing or out of range");
        return -1;
    }
    if (ib_json_pointer_int(json, line, len, "/output_length", &outl) != 0 || outl < 0 || outl > (1 << 24)) {
        snprintf(err, errlen, "'output_length' missing or out of range");
        return -1;
    }
    int64_t *ids;
    size_t nids;
    if (ib_json_pointer_int_array(json, line, len, "/hash_ids", &ids, &nids) != 0) {
        snprintf(err, errlen, "'hash_ids' must be an array of non-negative integers");
        return -1;
    }
    out->keys = malloc((nids ? nids : 1) * sizeof(*out->keys));
    for (size_t i = 0; out->keys != NULL && i < nids; i++) {
        if (ids[i] < 0 || ids[i] > UINT32_MAX) {
            free(out->keys);
            out->keys = NULL;
            break;
        }
        out->keys[i] = (uint64_t)ids[i];
    }
    free(ids);
    if (out->keys == NULL) {
        snprintf(err, errlen, "'hash_ids' must be an array of non-negative 32-bit integers");
        return -1;
    }
    out->nkeys = (uint32_t)nids;
    out->at_us = (uint64_t)ts * 1000;
    out->input_tokens = (uint32_t)in;
    out->output_tokens = (uint32_t)outl;
    return 0;
}

int ib_load_parse_azure_line(const char *line, size_t len, ib_load_item_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    char buf[128];
    if (len == 0 || len >= sizeof(buf)) {
        snprintf(err, errlen, "row is empty or too long");
        return -1;
    }
    memcpy(buf, line, len);
    buf[len] = '\0';
    int hh, mm;
    double ss;
    unsigned long ctx, gen;
    int y, mo, d, n = 0;
    if (sscanf(buf, "%d-%d-%d %d:%d:%lf,%lu,%lu%n", &y, &mo, &d, &hh, &mm, &ss, &ctx, &gen, &n) != 8 ||
        (size_t)n != strcspn(buf, "\r\n") || hh < 0 || hh > 23 || mm < 0 || mm > 59 || ss < 0 || ss >= 61 ||
        ctx == 0 || ctx > (1u << 24) || gen > (1u << 24)) {
        snprintf(err, errlen, "expected 'YYYY-MM-DD hh:mm:ss.fffffff,ContextTokens,GeneratedTokens'");
        return -1;
    }
    /* Days since an epoch (civil calendar), so traces crossing midnight stay ordered. */
    int yy = y - (mo <= 2);
    int era = (yy >= 0 ? yy : yy - 399) / 400;
    int yoe = yy - era * 400;
    int doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    long days = (long)era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy;
    double secs = (double)days * 86400.0 + hh * 3600.0 + mm * 60.0 + ss;
    out->at_us = (uint64_t)llround(secs * 1e6);
    out->input_tokens = (uint32_t)ctx;
    out->output_tokens = (uint32_t)gen;
    return 0;
}

int ib_load_read_trace(ib_load_workload_t *w, const char *path, size_t limit, uint32_t spread_ms)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "ib-load: cannot open trace %s: %s\n", path, strerror(errno));
        return -1;
    }
    struct ib_json_parser *json = ib_json_parser_new(1 << 24);
    char *line = NULL;
    size_t linecap = 0, lineno = 0;
    ssize_t n;
    int rc = 0;
    uint64_t base = 0;
    w->source = 0;
    while ((n = getline(&line, &linecap, f)) > 0 && (limit == 0 || w->nitems < limit)) {
        lineno++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            n--;
        if (n == 0)
            continue;
        if (w->source == 0) {
            w->source = line[0] == '{' ? IB_SRC_MOONCAKE : IB_SRC_AZURE;
            if (w->source == IB_SRC_AZURE && strncmp(line, "TIMESTAMP", 9) == 0)
                continue;
        }
        ib_load_item_t it;
        char err[160];
        int prc = w->source == IB_SRC_MOONCAKE ? ib_load_parse_mooncake_line(json, line, (size_t)n, &it, err, sizeof(err))
                                               : ib_load_parse_azure_line(line, (size_t)n, &it, err, sizeof(err));
        if (prc != 0) {
            fprintf(stderr, "ib-load: %s:%zu: %s\n", path, lineno, err);
            rc = -1;
            break;
        }
        if (w->nitems == 0)
            base = it.at_us;
        if (it.at_us < base) {
            fprintf(stderr, "ib-load: %s:%zu: timestamps go backwards\n", path, lineno);
            free(it.keys);
            rc = -1;
            break;
        }
        it.at_us -= base;
        it.index = (uint32_t)lineno;
        ib_load_item_t *slot = push_item(w);
        if (slot == NULL) {
            free(it.keys);
            rc = -1;
            break;
        }
        *slot = it;
    }
    free(line);
    fclose(f);
    ib_json_parser_free(json);
    if (rc == 0 && w->nitems == 0) {
        fprintf(stderr, "ib-load: %s holds no requests\n", path);
        rc = -1;
    }
    if (rc == 0 && spread_ms > 0) {
        /* Spread each run of equal timestamps evenly over spread_ms. */
        for (size_t i = 0; i < w->nitems;) {
            size_t j = i;
            while (j < w->nitems && w->items[j].at_us == w->items[i].at_us)
                j++;
            for (size_t k = i; k < j; k++)
                w->items[k].at_us += (uint64_t)spread_ms * 1000 * (k - i) / (j - i);
            i = j;
        }
    }
    if (rc != 0)
        ib_load_workload_free(w);
    return rc;
}

/* ---- synthetic ---- */

static double exp_sample(uint64_t *state, double rate)
{
    double u = (double)(splitmix64(state) >> 11) / 9007199254740992.0; /* [0,1) */
    return -log(1.0 - u) / rate;
}

int ib_load_gen_shared_prefix(ib_load_workload_t *w, uint32_t groups, uint32_t per_group, uint32_t output_tokens,
                              double rate)
{
    w->source = IB_SRC_SHARED_PREFIX;
    size_t n = (size_t)groups * per_group;
    for (size_t i = 0; i < n; i++) {
        ib_load_item_t *it = push_item(w);
        if (it == NULL)
            return -1;
        it->group = (uint32_t)(i / per_group);
        it->index = (uint32_t)(i % per_group);
        it->input_tokens = w->system_tokens + w->question_tokens;
        it->output_tokens = output_tokens;
    }
    /* Shuffle (Fisher-Yates, seeded) as SGLang's benchmark does, then set arrivals. */
    uint64_t st = w->seed ^ 0x5eedull;
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(splitmix64(&st) % i);
        ib_load_item_t t = w->items[i - 1];
        w->items[i - 1] = w->items[j];
        w->items[j] = t;
    }
    double t = 0;
    for (size_t i = 0; i < n; i++) {
        w->items[i].at_us = (uint64_t)(t * 1e6);
        if (rate > 0)
            t += exp_sample(&st, rate);
    }
    return 0;
}

int ib_load_gen_multi_turn(ib_load_workload_t *w, uint32_t users, uint32_t output_tokens, double rate)
{
    w->source = IB_SRC_MULTI_TURN;
    uint64_t st = w->seed ^ 0x7u;
    double t = 0;
    for (uint32_t u = 0; u < users; u++) {
        ib_load_item_t *it = push_item(w);
        if (it == NULL)
            return -1;
        it->group = u;
        it->at_us = (uint64_t)(t * 1e6);
        it->input_tokens = w->system_tokens + w->history_tokens + w->question_tokens;
        it->output_tokens = output_tokens;
        if (rate > 0)
            t += exp_sample(&st, rate);
    }
    return 0;
}
